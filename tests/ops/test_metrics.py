"""Domain metrics: valid Prometheus text, bounded labels, signal-driven counts, multiprocess aggregation."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ops import metrics

ROOT = Path(__file__).resolve().parents[2]
DOMAIN_FAMILIES = {
    "streamforge_queues_started",
    "streamforge_queues_finished",
    "streamforge_commands",
    "streamforge_telemetry_events",
    "streamforge_dead_letters",
    "streamforge_step_launch_seconds",
    "streamforge_step_stop_seconds",
    "streamforge_reconcile_seconds",
    "streamforge_kafka_consumer_lag",
    "streamforge_steps",
    "streamforge_queues",
    "streamforge_state_metrics_up",
}
UNBOUNDED_LABELS = {"queue_id", "producer", "telemetry_id", "job_name", "step"}


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def sample(families: dict, family: str, name: str, **labels) -> float | None:
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_it_serves_domain_metrics_that_parse_as_prometheus_text(client):
    metrics.count_command("start", "accepted")
    metrics.count_telemetry("progress", "loader-producer")
    metrics.count_dead_letter("queue-events", "invalid_json")
    metrics.observe_launch("loader-producer", 3.5)
    metrics.observe_stop(2.0)
    metrics.observe_reconcile(0.04)
    metrics.set_consumer_lag("queue-events", 12)
    metrics.count_queue_started("api")
    metrics.count_queue_finished("succeeded")

    families = scrape(client)

    assert DOMAIN_FAMILIES <= set(families)
    assert any(name.startswith("django_http_requests") for name in families)  # django-prometheus still there
    assert sample(families, "streamforge_commands", "streamforge_commands_total", kind="start", outcome="accepted") >= 1
    assert sample(families, "streamforge_kafka_consumer_lag", "streamforge_kafka_consumer_lag", topic="queue-events") == 12
    for family in families.values():
        for s in family.samples:
            assert not UNBOUNDED_LABELS & set(s.labels), (s.name, s.labels)


def test_it_keeps_label_values_bounded():
    for n in range(200):
        metrics.count_dead_letter("queue-events", f"reason-{n}")
        metrics.count_telemetry("progress", f"loader-producer__{n}")
        metrics.count_command(f"kind-{n}", "accepted")

    reasons = {s.labels["reason"] for s in metrics.DEAD_LETTERS.collect()[0].samples}
    targets = {s.labels["target"] for s in metrics.TELEMETRY_EVENTS.collect()[0].samples}
    kinds = {s.labels["kind"] for s in metrics.COMMANDS.collect()[0].samples}
    assert len(reasons) <= metrics.MAX_VALUES_PER_LABEL + 1
    assert "other" in reasons
    assert not any(t.startswith("loader-producer__") for t in targets)
    assert kinds <= metrics.COMMAND_KINDS | {"other"}
    metrics.count_dead_letter("some-data-topic-of-a-queue", "x")
    topics = {s.labels["topic"] for s in metrics.DEAD_LETTERS.collect()[0].samples}
    assert "some-data-topic-of-a-queue" not in topics


@pytest.mark.django_db
def test_it_counts_steps_by_state_from_the_database(client, historical_payload):
    from queues.models import QueueRequest, StepState
    from jobs.submission import queue_create

    queue, _ = queue_create(payload=historical_payload)
    first = queue.steps.order_by("position").first()
    first.transition(StepState.RUNNING)
    waiting = QueueRequest.objects.filter(state=StepState.WAITING, target=first.target).count()

    families = scrape(client)

    assert sample(families, "streamforge_steps", "streamforge_steps", state="running", target=first.target) == 1
    assert sample(families, "streamforge_steps", "streamforge_steps", state="waiting", target=first.target) == waiting
    assert sample(families, "streamforge_queues", "streamforge_queues", status="running") == 1  # advanced on submission
    assert sample(families, "streamforge_state_metrics_up", "streamforge_state_metrics_up") == 1


@pytest.mark.django_db
def test_it_counts_queues_started_and_finished_from_signals(historical_payload, django_capture_on_commit_callbacks):
    from queues.models import StepState
    from jobs.services import queue_refresh_status
    from jobs.submission import queue_create

    started = value("streamforge_queues_started_total", source="kafka")
    finished = value("streamforge_queues_finished_total", outcome="succeeded")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        queue, _ = queue_create(payload=historical_payload, source="kafka")
    for callback in callbacks:
        if getattr(callback, "__module__", "") == "ops.receivers":
            callback()
    assert value("streamforge_queues_started_total", source="kafka") == started + 1

    with django_capture_on_commit_callbacks(execute=True):  # metrics are recorded on commit
        for step in queue.steps.all():
            step.transition(StepState.SUCCEEDED)
        queue_refresh_status(queue=queue)
        queue_refresh_status(queue=queue)  # no change, no second count

    assert value("streamforge_queues_finished_total", outcome="succeeded") == finished + 1


@pytest.mark.django_db
def test_it_observes_launch_and_stop_latency_from_step_transitions(
    historical_payload, django_capture_on_commit_callbacks
):
    from queues.models import StepState
    from jobs.submission import queue_create

    queue, _ = queue_create(payload=historical_payload)
    step = queue.steps.order_by("position").first()
    launches = value("streamforge_step_launch_seconds_count", target=step.target)
    launch_sum = value("streamforge_step_launch_seconds_sum", target=step.target)
    stops = value("streamforge_step_stop_seconds_count")
    now = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):  # metrics are recorded on commit
        step.transition(StepState.LAUNCHING, launched_at=now - timedelta(seconds=5))
        step.transition(StepState.RUNNING, started_at=now)
        step.transition(StepState.STOPPING, stop_requested_at=now - timedelta(seconds=2))
        step.transition(StepState.STOPPED, finished_at=now)

    assert value("streamforge_step_launch_seconds_count", target=step.target) == launches + 1
    assert value("streamforge_step_launch_seconds_sum", target=step.target) == pytest.approx(launch_sum + 5, abs=0.01)
    assert value("streamforge_step_stop_seconds_count") == stops + 1


def test_it_times_a_reconcile_pass_the_scheduler_announces():
    """Issue #11 (layering): the scheduler sends jobs.signals.reconcile_finished; ops records it."""
    from jobs.signals import reconcile_finished

    before = value("streamforge_reconcile_seconds_count")
    reconcile_finished.send(sender=None, seconds=0.25)
    assert value("streamforge_reconcile_seconds_count") == before + 1


def _run_in_other_process(directory: Path, code: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


RECORD_IN_WORKER = (
    "import django; django.setup(); from ops import metrics; "
    "metrics.count_command('stop', 'accepted'); metrics.count_command('stop', 'accepted'); "
    "metrics.observe_reconcile(0.2)"
)


@pytest.mark.django_db
def test_it_serves_metrics_written_by_other_processes_in_multiprocess_mode(client, tmp_path, monkeypatch):
    _run_in_other_process(tmp_path, RECORD_IN_WORKER)
    _run_in_other_process(tmp_path, RECORD_IN_WORKER)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    families = scrape(client)

    assert sample(families, "streamforge_commands", "streamforge_commands_total", kind="stop", outcome="accepted") == 4
    assert sample(families, "streamforge_reconcile_seconds", "streamforge_reconcile_seconds_count") == 2
    # The database-backed gauges are still served once.
    assert sample(families, "streamforge_state_metrics_up", "streamforge_state_metrics_up") == 1


def test_it_exports_a_pods_processes_with_the_metrics_server(tmp_path):
    from devtools.servers import free_port

    _run_in_other_process(tmp_path, RECORD_IN_WORKER)
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_PORT": str(port), "METRICS_ADDR": "127.0.0.1"}
    server = subprocess.Popen([sys.executable, "-m", "ops.metrics_server"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    text = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=10)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert sample(families, "streamforge_commands", "streamforge_commands_total", kind="stop", outcome="accepted") == 2
    assert server.returncode == 0


@pytest.mark.django_db
def test_it_reports_the_mirror_backlog_only_when_the_mirror_is_enabled(client, settings):
    import mirror

    settings.ARANGO_ENABLED = False
    assert "streamforge_mirror_backlog" not in scrape(client)
    settings.ARANGO_ENABLED = True
    expected = mirror.status()["backlog"]
    families = scrape(client)
    assert sample(families, "streamforge_mirror_backlog", "streamforge_mirror_backlog") == expected
