"""The benchmarks' data generator (issue #12, "Deliver": a generator that loads the history with COPY,
reused by the benchmarks) at a tiny scale: it must keep the counts and the consistency it promises,
so the figures it feeds cannot silently rot."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from benchmarks import dataset, dataset_shape
from queues.contract import parse_payload
from queues.models import Queue, QueueRequest, QueueStatus, StepDependency, StepState, TelemetryEvent
from queues.pipeline_templates import template_payload

TINY = dataset.Scale(queues=60, active=7, telemetry_queues=10, events_per_step=2, seed=3)


@pytest.fixture
def loaded(transactional_db):
    return dataset.ensure(TINY, log=lambda *_: None)


def test_it_loads_exact_counts(loaded):
    """Issue #12 Deliver: N queues of the 6-step template, their edges, the newest `active` running."""
    edges_per_queue = len(parse_payload(template_payload("historical-pipeline")).edges)
    assert edges_per_queue > 0
    assert (loaded.queues, loaded.steps, loaded.edges) == (60, 360, 60 * edges_per_queue)
    assert Queue.objects.count() == 60
    assert QueueRequest.objects.count() == 360
    assert StepDependency.objects.count() == 60 * edges_per_queue
    assert Queue.objects.filter(status=QueueStatus.RUNNING).count() == 7
    newest = Queue.objects.order_by("-created_at")[:7]
    assert {q.status for q in newest} == {QueueStatus.RUNNING}
    assert QueueRequest.objects.filter(state=StepState.RUNNING).count() == 7 * 4  # 2,000 at 500 active
    assert QueueRequest.objects.filter(state=StepState.WAITING).count() == 7 * 2
    # Telemetry for every launched step of the newest 10 queues, events_per_step each.
    launched = QueueRequest.objects.filter(queue__in=Queue.objects.order_by("-created_at")[:10]).exclude(
        state=StepState.WAITING).exclude(launched_at=None).count()
    assert TelemetryEvent.objects.count() == loaded.events == launched * 2


def test_it_keeps_every_queue_consistent_with_its_steps(loaded):
    """Issue #12 Deliver: realistic states — each queue's status is what its steps imply (DESIGN §11)."""
    statuses = set()
    for queue in Queue.objects.prefetch_related("steps"):
        states = [s.state for s in queue.steps.all()]
        assert queue.derive_status(states) == queue.status, queue.queue_id
        statuses.add(queue.status)
        assert len(states) == 6
    assert {QueueStatus.RUNNING, QueueStatus.SUCCEEDED} <= statuses


def test_it_leaves_no_change_pending_so_a_reconcile_pass_has_nothing_to_advance(loaded):
    """Issue #12 (reconcile figure): a settled history, as the product leaves it after its advances ran.
    Rows copied from a freshly created prototype kept its pending count, so the first reconcile pass
    advanced every one of the 100,000 queues (the warm pass ran for many minutes)."""
    assert not Queue.objects.filter(changes_pending__gt=0).exists()


def test_it_keeps_timestamps_ordered_within_the_past_year(loaded):
    """Issue #12 Deliver: realistic timestamps — a year of history, started after created, ended after started."""
    now = timezone.now()
    for queue in Queue.objects.all():
        assert now - timedelta(days=366) <= queue.created_at <= now
        assert queue.started_at >= queue.created_at
        assert (queue.finished_at is None) == (queue.status in QueueStatus.ACTIVE)
        if queue.finished_at:
            assert queue.finished_at >= queue.started_at
    for step in QueueRequest.objects.exclude(launched_at=None):
        assert step.launched_at >= step.created_at
        if step.finished_at:
            assert step.finished_at >= step.started_at
    job_names = list(QueueRequest.objects.values_list("job_name", flat=True))
    assert len(set(job_names)) == len(job_names)


def test_it_reuses_the_data_on_a_second_run_and_reloads_another_scale(loaded):
    """Issue #12 Deliver: idempotent — a second run with the same scale loads nothing; another scale replaces it."""
    assert not loaded.reused
    again = dataset.ensure(TINY, log=lambda *_: None)
    assert again.reused and (again.queues, again.steps) == (60, 360)
    Queue.objects.create(queue_id="bench-leftover", symbol="BTCUSDT", payload={}, canonical_payload={})
    healed = dataset.ensure(TINY, log=lambda *_: None)
    assert not healed.reused and healed.queues == 60
    assert not Queue.objects.filter(queue_id="bench-leftover").exists()
    smaller = dataset.ensure(dataset.Scale(queues=12, active=2, telemetry_queues=2, seed=3), log=lambda *_: None)
    assert (smaller.queues, smaller.steps) == (12, 72) and not smaller.reused


def _schema() -> set[tuple[str, str]]:
    """Every index and constraint of the tables the loader touches (and of those pointing at them)."""
    from django.db import connection

    tables = [Queue._meta.db_table, QueueRequest._meta.db_table, StepDependency._meta.db_table,
              TelemetryEvent._meta.db_table]
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
                       " WHERE indrelid = ANY(%s::regclass[])", [tables])
        indexes = set(cursor.fetchall())
        cursor.execute("SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid) || "
                       " CASE WHEN convalidated THEN '' ELSE ' (not validated)' END FROM pg_constraint"
                       " WHERE conrelid = ANY(%s::regclass[]) OR confrelid = ANY(%s::regclass[])", [tables, tables])
        return indexes | set(cursor.fetchall())


def test_it_leaves_every_index_and_constraint_as_the_migrations_made_them(transactional_db):
    """Issue #12 Deliver (fast COPY load): the loader drops indexes and constraints while it copies and
    builds them again; afterwards each one exists with its name and definition, foreign keys validated."""
    before = _schema()
    assert any("FOREIGN KEY" in definition for _, definition in before)
    dataset.ensure(TINY, log=lambda *_: None)
    assert _schema() == before


def test_a_load_that_fails_midway_leaves_the_previous_history_and_schema(loaded, monkeypatch):
    """Issue #12 Deliver (fast COPY load): it runs in one transaction — a failure while copying leaves the
    previous rows, every index and constraint, and the marker, so the next run reuses or reloads cleanly."""
    schema, counts = _schema(), (Queue.objects.count(), QueueRequest.objects.count(), TelemetryEvent.objects.count())

    def broken(self, start, stop):
        raise RuntimeError("generator broke")

    monkeypatch.setattr(dataset_shape.Generator, "block", broken)
    with pytest.raises(RuntimeError, match="generator broke"):
        dataset.ensure(dataset.Scale(queues=30, active=3, telemetry_queues=3, seed=4), log=lambda *_: None)
    assert _schema() == schema
    assert (Queue.objects.count(), QueueRequest.objects.count(), TelemetryEvent.objects.count()) == counts
    monkeypatch.undo()
    assert dataset.ensure(TINY, log=lambda *_: None).reused


def test_rows_are_the_products_own(loaded):
    """Issue #12 Deliver: each generated queue is the prototype `queue_create` made, renamed — its payload
    names its symbol, its steps carry the product's Job names and topics for its own queue id."""
    from queues.naming import job_name

    for queue in Queue.objects.prefetch_related("steps"):
        assert queue.payload["symbol"] == queue.symbol and queue.canonical_payload["symbol"] == queue.symbol
        steps = list(queue.steps.all())
        assert [s.position for s in steps] == list(range(6))
        for step in steps:
            assert step.job_name == job_name(queue.queue_id, step.target, step.position + 1)
            assert not step.kafka_topic or step.kafka_topic.startswith(queue.queue_id + "-")
            assert isinstance(step.params, dict) and step.params["target"] == step.target
            assert step.launcher_handle == ({} if step.launched_at is None else
                                            {"launcher": "kubernetes", "namespace": "streamforge"})
    for edge in StepDependency.objects.select_related("upstream", "downstream"):
        assert edge.upstream.queue_id == edge.downstream.queue_id == edge.queue_id
