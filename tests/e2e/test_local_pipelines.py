"""Whole pipelines through a real Celery worker, the local launcher and simulated workers."""
from __future__ import annotations

import os
import signal
import json

import pytest

from queues.models import QueueStatus, StepState
from jobs.services import queue_stop
from jobs.submission import queue_create
from tests.e2e.conftest import group_alive, status_is, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def _steps(queue):
    return {s.name: s for s in queue.steps.all()}




def test_it_runs_the_historical_pipeline_in_dependency_order(pipeline, historical_payload):
    queue, _ = queue_create(payload=historical_payload)
    wait_for(status_is(queue, *QueueStatus.TERMINAL), timeout=90, message="historical queue ends", worker=pipeline.worker)
    steps = _steps(queue)
    assert queue.status == QueueStatus.SUCCEEDED, {n: (s.state, s.message) for n, s in steps.items()}
    candles_loader = steps["loader-producer-api-candles-5m"]
    trades_loader = steps["loader-producer-api-trades"]
    candles_connector = steps["arango-connector-api-candles-5m"]
    trades_connector = steps["arango-connector-api-trades"]
    graph = steps["graph-builder-gnn-graph"]
    trainer = steps["gnn-trainer-gnn-train"]
    # Connectors before the loaders of their type; a loader only after its connector was running.
    assert candles_connector.launched_at < candles_loader.launched_at
    assert trades_connector.launched_at < trades_loader.launched_at
    assert candles_connector.started_at <= candles_loader.launched_at
    # graph-builder after both connectors succeeded (drained), gnn-trainer after graph-builder.
    assert graph.launched_at >= max(candles_connector.finished_at, trades_connector.finished_at)
    assert trainer.launched_at >= graph.finished_at
    # Every step ran exactly once, reported progress, and the connectors wrote what loaders produced.
    for step in steps.values():
        assert pipeline.starts_of(step) == 1, step.name
        assert step.records_written > 0, step.name
    assert candles_connector.records_written >= candles_loader.records_written
    assert "epoch" in trainer.extra and "loss" in trainer.extra
    assert "Drained" in candles_connector.message


def test_it_runs_the_realtime_pipeline_and_stops_it(pipeline, realtime_payload):
    queue, _ = queue_create(payload=realtime_payload)
    wait_for(
        lambda: queue.steps.filter(state=StepState.RUNNING).count() == 7,
        timeout=60, message="all seven realtime steps running", worker=pipeline.worker,
    )
    queue.refresh_from_db()
    assert queue.status == QueueStatus.RUNNING
    pgids = [json.loads((pipeline.step_dir(s) / "process.json").read_text())["pgid"] for s in queue.steps.all()]
    assert all(group_alive(p) for p in pgids)

    queue_stop(queue=queue)
    wait_for(status_is(queue, QueueStatus.STOPPED), timeout=60, message="realtime queue stopped", worker=pipeline.worker)
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}
    wait_for(lambda: not any(group_alive(p) for p in pgids), timeout=10, message="no step process left")
    # Stopped gracefully: each worker reported interrupted and finished.
    for step in queue.steps.all():
        assert set(step.events.values_list("status", flat=True)) >= {"started", "interrupted", "finished"}, step.name


def test_it_fails_the_queue_when_a_step_fails(pipeline, historical_payload):
    pipeline.inject({"*/loader-producer-api-trades": {"fail_after": 1}})
    queue, _ = queue_create(payload=historical_payload)
    wait_for(status_is(queue, QueueStatus.FAILED), timeout=60, message="queue failed", worker=pipeline.worker)
    wait_for(
        lambda: not queue.steps.filter(state__in=StepState.LAUNCHED).exists(),
        timeout=60, message="every launched step ended", worker=pipeline.worker,
    )
    steps = _steps(queue)
    assert steps["loader-producer-api-trades"].state == StepState.FAILED
    assert "injected failure" in steps["loader-producer-api-trades"].message
    # Waiting steps were cancelled without ever launching; running ones were stopped.
    for name in ("graph-builder-gnn-graph", "gnn-trainer-gnn-train"):
        assert steps[name].state == StepState.STOPPED and steps[name].launched_at is None, name
        assert steps[name].message.startswith("Cancelled")
    assert steps["arango-connector-api-trades"].state in (StepState.STOPPED, StepState.SUCCEEDED)
    queue.refresh_from_db()
    assert "loader-producer-api-trades" in queue.message


def test_it_survives_a_worker_killed_while_launching(pipeline, historical_payload):
    # Each connector's launch pauses after its process started, before the launch is recorded.
    pipeline.inject({"*/arango-connector-*": {"launch_delay": 8}})  # a wide window, even on a busy machine
    queue, _ = queue_create(payload=historical_payload)
    connector = queue.steps.get(name="arango-connector-api-candles-5m")
    wait_for(lambda: (pipeline.step_dir(connector) / "process.json").exists(), timeout=30, message="connector process started")
    pipeline.worker.kill()
    connector.refresh_from_db()
    # killed in the middle of its launch: the launch was never recorded (the process may already have
    # reported `started`, which moves the step on by telemetry — that race is part of what must survive)
    assert connector.launcher_handle == {} and connector.state in (StepState.LAUNCHING, StepState.RUNNING)
    pipeline.inject({})
    pipeline.worker.start()
    wait_for(status_is(queue, *QueueStatus.TERMINAL), timeout=120, message="queue ends after the restart", worker=pipeline.worker)
    assert queue.status == QueueStatus.SUCCEEDED
    for step in queue.steps.all():
        assert pipeline.starts_of(step) == 1, f"{step.name} started {pipeline.starts_of(step)} times"


def test_it_notices_a_step_process_killed_from_outside(pipeline, realtime_payload):
    queue, _ = queue_create(payload=realtime_payload)
    visualizer = queue.steps.get(target="visualizer")
    wait_for(lambda: queue.steps.filter(pk=visualizer.pk, state=StepState.RUNNING).exists(), timeout=60, message="visualizer running")
    process = json.loads((pipeline.step_dir(visualizer) / "process.json").read_text())
    os.killpg(process["pgid"], signal.SIGKILL)
    wait_for(
        lambda: queue.steps.filter(pk=visualizer.pk, state=StepState.FAILED).exists(),
        timeout=30, message="killed step marked failed", worker=pipeline.worker,
    )
    visualizer.refresh_from_db()
    assert "killed by signal 9" in visualizer.message
    # Failure policy: the queue fails and its other steps are stopped.
    wait_for(status_is(queue, QueueStatus.FAILED), timeout=30, message="queue failed")
    wait_for(lambda: not queue.steps.filter(state__in=StepState.LAUNCHED).exists(), timeout=60, message="others stopped", worker=pipeline.worker)
