"""No workload without a live step (issue #10 §2), against the emulated cluster with the real client.

The scheduler, reconcile and the launcher run for real; the test plays the Job controller, the
workers' telemetry and the moment a stop lands while a launch is in flight.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import launching, scheduler
from jobs.telemetry import ingest_events
from queues.models import QueueRequest, StepState
from jobs.services import step_stop
from tests.jobs.helpers import on_task, put
from tests.jobs.test_kubernetes_pipeline import cluster_jobs_of, k8s_pipeline, start, step, tick  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def discard_inline(monkeypatch):
    """Run the discard task the moment it is sent (the Celery worker's part)."""
    on_task(monkeypatch, "step_discard_task", lambda pk, name: scheduler.step_discard(pk, job_name=name))
    on_task(monkeypatch, "step_send_stop_task", lambda pk: scheduler.step_send_stop(pk))
    on_task(monkeypatch, "queue_advance_task", lambda pk: None)


def _launch_with(monkeypatch, during):
    """Make the launcher run `during` while the launch is in flight, before the Job is created."""
    launcher = scheduler.get_launcher()
    real = launcher.launch

    def launch(step_):
        during(step_)
        return real(step_)

    monkeypatch.setattr(launcher, "launch", launch)


def test_it_deletes_a_job_created_after_a_stop_ended_its_step(k8s_pipeline, historical_queue, monkeypatch, discard_inline):
    """Issue #10 §2 "Stop racing a launch" (Kubernetes): the attempt outlived its deadline, the stop
    ended the step with no Job to be seen, then the create call returned: that Job is deleted."""
    controller, queue = k8s_pipeline, historical_queue
    connector = step(queue, "arango-connector", "api_candles_5m")
    scheduler.queue_advance(queue.pk)

    def during(step_):
        QueueRequest.objects.filter(pk=step_.pk).update(next_launch_at=timezone.now() - timedelta(seconds=1))
        step_stop(step=step_)
        scheduler.reconcile()
        assert QueueRequest.objects.get(pk=step_.pk).state == StepState.STOPPED

    _launch_with(monkeypatch, during)
    launching.step_launch(connector.pk)

    assert connector.job_name not in cluster_jobs_of(controller, queue)
    assert QueueRequest.objects.get(pk=connector.pk).state == StepState.STOPPED


def test_it_stops_a_step_whose_launch_was_in_flight_without_leftovers(
    k8s_pipeline, historical_queue, monkeypatch, settings, discard_inline
):
    """Issue #10 §2 "Stop racing a launch" (Kubernetes): while the launch is in flight, no Job is not
    "gone"; once the launch returned, the stop flow removes the Job and ends the step."""
    controller, queue = k8s_pipeline, historical_queue
    connector = step(queue, "arango-connector", "api_candles_5m")
    scheduler.queue_advance(queue.pk)

    def during(step_):
        step_stop(step=step_)
        scheduler.reconcile()
        assert QueueRequest.objects.get(pk=step_.pk).state == StepState.STOPPING

    _launch_with(monkeypatch, during)
    launching.step_launch(connector.pk)
    assert connector.job_name in cluster_jobs_of(controller, queue)

    settings.STOP_GRACE_SECONDS = 0
    tick(queue)  # grace over: the Job is deleted
    tick(queue)  # and the step ends
    assert QueueRequest.objects.get(pk=connector.pk).state == StepState.STOPPED
    assert cluster_jobs_of(controller, queue) == []


@pytest.mark.parametrize("kind", ["batch", "streaming"])
def test_it_deletes_the_job_of_a_step_that_reported_an_error(
    k8s_pipeline, historical_queue, realtime_queue, kind, django_capture_on_commit_callbacks, discard_inline
):
    """Issue #10 §2 "Failed by telemetry": the step fails at once and its Job is deleted, so
    Kubernetes does not run it again (batch, up to backoffLimit) or forever (streaming)."""
    controller = k8s_pipeline
    queue = historical_queue if kind == "batch" else realtime_queue
    start(queue)
    failing = queue.steps.filter(state=StepState.PENDING, streaming=(kind == "streaming")).first()
    assert failing is not None
    controller.mark_running(failing.job_name)
    controller.set_pod_log(controller.pods(failing.job_name)[0], "connecting\nboom\n")
    tick(queue)

    with django_capture_on_commit_callbacks(execute=True):
        ingest_events([{"queue_id": queue.queue_id, "producer": failing.telemetry_id, "status": "error",
                        "error_message": "exchange refused the key"}])  # fmt: skip

    failing.refresh_from_db()
    assert failing.state == StepState.FAILED and failing.message == "exchange refused the key"
    assert failing.job_name not in cluster_jobs_of(controller, queue)
    assert "boom" in failing.logs  # kept before the pods went


def test_it_deletes_a_running_job_whose_step_ended_in_the_database(k8s_pipeline, historical_queue, settings):
    """Issue #10 §2 "Failed by telemetry" (the reconcile half): whatever ended the step, a Job still
    running for it is deleted once the stop grace period has passed; finished Jobs wait for their TTL."""
    controller, queue = k8s_pipeline, historical_queue
    connectors = [step(queue, "arango-connector", t) for t in ("api_candles_5m", "api_trades")]
    start(queue)
    for c in connectors:
        controller.mark_running(c.job_name)
    tick(queue)
    settings.STOP_GRACE_SECONDS = 30
    long_ago, just_now = timezone.now() - timedelta(minutes=5), timezone.now()
    put(connectors[0], StepState.FAILED, finished_at=long_ago)  # e.g. the discard task was lost
    put(connectors[1], StepState.SUCCEEDED, finished_at=just_now)  # its pod may still be exiting

    tick(queue)

    jobs = cluster_jobs_of(controller, queue)
    assert connectors[0].job_name not in jobs
    assert connectors[1].job_name in jobs
