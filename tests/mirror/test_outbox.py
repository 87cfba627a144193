"""Recording changes: same transaction, coalesced per entity, one drain enqueued on commit."""
import pytest
from django.db import transaction

from mirror import outbox
from mirror.models import MirrorOutbox
from queues.models import Queue, QueueRequest, StepState, TelemetryEvent
from jobs.services import queue_refresh_status
from jobs.submission import queue_create
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db


def pending():
    return {(r.kind, r.object_id): r for r in MirrorOutbox.objects.all()}


def test_it_records_nothing_while_the_mirror_is_off(settings, historical_payload):
    settings.ARANGO_ENABLED = False
    queue_create(payload=historical_payload)
    assert not MirrorOutbox.objects.exists()


def test_it_coalesces_repeated_changes_into_one_row_with_a_newer_version(mirror):
    queue = make_queue(first_advance=False)  # this test advances its first step
    step = queue.steps.first()
    step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    first = pending()[("step", step.pk)]
    step.transition(StepState.RUNNING, from_states=[StepState.LAUNCHING])
    queue_refresh_status(queue=queue)  # sends queue_status_changed (pending -> running)

    rows = pending()
    assert set(rows) == {("queue", queue.pk), ("step", step.pk)}
    assert rows[("step", step.pk)].version > first.version
    assert rows[("step", step.pk)].created_at == first.created_at  # oldest pending change is kept
    assert rows[("step", step.pk)].doc_key == f"{queue.queue_id}__{step.name}"


def test_it_rolls_back_the_record_with_the_change(mirror, historical_payload):
    queue, _ = queue_create(payload=historical_payload)
    MirrorOutbox.objects.all().delete()
    step = queue.steps.first()
    with pytest.raises(RuntimeError), transaction.atomic():
        step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
        assert ("step", step.pk) in pending()
        raise RuntimeError("the scheduler failed after the transition")
    assert QueueRequest.objects.get(pk=step.pk).state == StepState.WAITING
    assert not MirrorOutbox.objects.exists()


def test_it_records_bulk_paths_through_record_many(mirror, historical_payload):
    queue, _ = queue_create(payload=historical_payload)
    MirrorOutbox.objects.all().delete()
    with transaction.atomic():
        events = TelemetryEvent.objects.bulk_create(
            [TelemetryEvent(queue=queue, event_key=f"bulk-{i}", status="progress", payload={"i": i}) for i in range(3)]
        )
        outbox.record_many("telemetry", [e.pk for e in events])
    assert set(pending()) == {("telemetry", e.pk) for e in events}
    # bulk_create(ignore_conflicts=True) sets no pks: record by a queryset instead.
    MirrorOutbox.objects.all().delete()
    TelemetryEvent.objects.bulk_create([TelemetryEvent(queue=queue, event_key="bulk-x", status="pong", payload={})],
                                       ignore_conflicts=True)
    outbox.record_queryset("telemetry", TelemetryEvent.objects.filter(event_key__in=["bulk-x", "bulk-0"]))
    assert {r.object_id for r in MirrorOutbox.objects.all()} == {
        e.pk for e in TelemetryEvent.objects.filter(event_key__in=["bulk-x", "bulk-0"])}
    with pytest.raises(ValueError):
        outbox.record("job", 1)


def test_it_records_deletes_with_the_document_key(mirror, realtime_payload):
    queue, _ = queue_create(payload=realtime_payload, queue_id="rt-delete-me")
    MirrorOutbox.objects.all().delete()
    step_keys = {f"rt-delete-me__{s.name}" for s in queue.steps.all()}
    Queue.objects.filter(pk=queue.pk).delete()
    rows = list(MirrorOutbox.objects.all())
    assert {r.doc_key for r in rows if r.kind == "step"} == step_keys
    assert [r.doc_key for r in rows if r.kind == "queue"] == ["rt-delete-me"]


def test_it_enqueues_one_drain_per_transaction_on_commit(mirror, historical_payload, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    from mirror import tasks

    calls = []
    monkeypatch.setattr(tasks.mirror_drain_task, "delay", lambda: calls.append(1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            queue, _ = queue_create(payload=historical_payload)
            for step in queue.steps.all():
                step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    assert calls == []  # nothing before commit
    mirror_callbacks = [c for c in callbacks if c is outbox._enqueue_drain]
    assert len(mirror_callbacks) == 1
    mirror_callbacks[0]()
    assert calls == [1]


def test_it_survives_a_broker_that_refuses_the_task(mirror, monkeypatch):
    from mirror import tasks

    def refuse():
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.mirror_drain_task, "delay", refuse)
    outbox._enqueue_drain()  # logs, does not raise: the periodic drain picks the change up
