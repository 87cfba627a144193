"""Out-of-order and repeated syncs converge; per-document errors stay in the outbox."""
import pytest
from django.utils import timezone

from mirror import arango, sync
from mirror.models import MirrorOutbox, MirrorState
from mirror.sync import mirror_drain
from queues.models import QueueRequest, StepState, TelemetryEvent
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def test_it_ignores_an_older_version_written_after_a_newer_one(mirror):
    db = arango.connect()
    newer = {"_key": "q1", "status": "running", "version": 20}
    older = {"_key": "q1", "status": "pending", "version": 10}
    assert arango.upsert_versioned(db, "queues", [newer]).written == 1
    late = arango.upsert_versioned(db, "queues", [older])
    assert (late.written, late.skipped) == (0, 1)
    assert mirror.docs("queues")["q1"]["status"] == "running"
    # The same version again is a no-op too (a retried batch), a newer one wins.
    assert arango.upsert_versioned(db, "queues", [newer]).skipped == 1
    arango.upsert_versioned(db, "queues", [{"_key": "q1", "status": "succeeded", "version": 30}])
    assert mirror.docs("queues")["q1"] == {"_key": "q1", "status": "succeeded", "version": 30}


def test_it_converges_when_a_slow_drain_writes_after_a_newer_one(mirror, historical_payload):
    queue, _ = queue_create(payload=historical_payload, queue_id="slow-drain")
    step = queue.steps.get(position=0)
    mirror_drain()
    # A slow drain claims and reads the step while it is launching…
    step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    slow_version, slow_rows = sync._claim(100)
    slow_batch, _ = sync._build(slow_version, slow_rows)
    # …the step moves on and a fast drain (after the slow one's lease ran out) writes the new state first…
    step.transition(StepState.RUNNING, from_states=[StepState.LAUNCHING])
    MirrorOutbox.objects.update(claimed_until=None)
    mirror_drain()
    assert mirror.docs("steps")[f"slow-drain__{step.name}"]["state"] == "running"
    # …then the slow drain finally writes its older state: ignored.
    errors = sync.write_batch(arango.connect(), slow_batch)
    sync._finish(slow_rows, errors)
    assert errors == {}
    assert mirror.docs("steps")[f"slow-drain__{step.name}"]["state"] == "running"
    assert_mirror_matches_postgres(mirror)


def test_it_keeps_a_row_that_changed_while_its_batch_was_in_flight(mirror, historical_payload):
    queue, _ = queue_create(payload=historical_payload, queue_id="in-flight")
    mirror_drain()
    step = queue.steps.get(position=0)
    step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    version, rows = sync._claim(100)
    batch, _ = sync._build(version, rows)
    step.transition(StepState.RUNNING, from_states=[StepState.LAUNCHING])  # after the state was read
    sync._finish(rows, sync.write_batch(arango.connect(), batch))

    row = MirrorOutbox.objects.get(kind="step", object_id=step.pk)
    assert row.claimed_until is None and row.version > rows[0].version  # released, not deleted
    assert mirror.docs("steps")[f"in-flight__{step.name}"]["state"] == "launching"
    mirror_drain()
    assert not MirrorOutbox.objects.exists()
    assert mirror.docs("steps")[f"in-flight__{step.name}"]["state"] == "running"


def test_it_is_idempotent_when_drained_repeatedly(mirror, realtime_payload):
    queue, _ = queue_create(payload=realtime_payload)
    mirror_drain()
    first = mirror.snapshot()
    assert mirror_drain().synced == 0  # nothing pending
    queue.steps.first().transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    MirrorOutbox.objects.update(claimed_until=None)
    mirror_drain()
    mirror_drain()
    second = assert_mirror_matches_postgres(mirror)
    assert set(second["steps"]) == set(first["steps"]) and set(second["queues"]) == set(first["queues"])


def test_it_keeps_documents_arango_rejects_in_the_outbox_with_the_error(mirror, historical_payload,
                                                                         realtime_payload):
    hist, _ = queue_create(payload=historical_payload, queue_id="hist-ok")
    step = hist.steps.get(position=0)
    step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    rt, _ = queue_create(payload=realtime_payload, queue_id="rt-ok")
    db = arango.connect()
    # Another document already holds this step's job_name: the unique index rejects the step's write.
    db.collection("steps").insert({"_key": "squatter", "job_name": step.job_name, "version": 1})

    result = mirror_drain()

    assert result.failed == 1
    row = MirrorOutbox.objects.get()
    assert (row.kind, row.object_id, row.attempts) == ("step", step.pk, 1)
    assert "unique constraint" in row.last_error and f"hist-ok__{step.name}" in row.last_error
    assert row.claimed_until > timezone.now()  # backed off, not retried in a hot loop
    assert f"hist-ok__{step.name}" not in mirror.docs("steps")
    assert "rt-ok" in mirror.docs("queues")  # the rest of the batch went through
    state = MirrorState.get()
    assert "rejected" in state.last_error and state.last_success_at is not None

    # Fixed on the ArangoDB side: the next attempt succeeds and the row goes away.
    db.collection("steps").delete("squatter")
    MirrorOutbox.objects.update(claimed_until=None)
    assert mirror_drain().failed == 0
    assert not MirrorOutbox.objects.exists()
    assert mirror.docs("steps")[f"hist-ok__{step.name}"]["state"] == "launching"


def test_it_removes_documents_and_edges_of_deleted_queues(mirror, historical_payload, realtime_payload):
    hist, _ = queue_create(payload=historical_payload, queue_id="hist-keep")
    rt, _ = queue_create(payload=realtime_payload, queue_id="rt-gone")
    for step in rt.steps.all()[:2]:
        TelemetryEvent.objects.create(queue=rt, step=step, event_key=f"gone-{step.pk}", status="started",
                                      producer=step.telemetry_id, payload={})
    TelemetryEvent.objects.create(queue=hist, event_key="kept", status="pong", payload={})
    mirror_drain()
    assert len(mirror.docs("telemetry")) == 3
    rt.delete()
    mirror_drain()
    docs = assert_mirror_matches_postgres(mirror)
    assert set(docs["queues"]) == {"hist-keep"} and set(docs["telemetry"]) == {"kept"}
    assert not any(k.startswith("rt-gone") for name in ("steps", "queue_steps", "step_reads", "step_writes")
                   for k in docs[name])
    assert QueueRequest.objects.filter(queue=hist).count() == len(docs["steps"])
