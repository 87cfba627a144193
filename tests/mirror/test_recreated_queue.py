"""A queue deleted and re-created with the same queue_id (the admin deletes queues; clients may choose
queue_id): the delete of the old queue's documents must never remove the new queue's, which have the
same keys — neither when both changes are drained in one batch nor when a slow drain deletes late."""
import pytest

from jobs.services import queue_create
from jobs.telemetry import ingest_events
from mirror import arango, sync
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from queues.models import Queue, StepState

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def _with_telemetry(queue) -> None:
    loader = queue.steps.get(name="loader-producer-api-trades")
    loader.transition(StepState.PENDING, from_states=[StepState.WAITING])
    assert ingest_events([{"event": "started", "queue_id": queue.queue_id, "producer": loader.telemetry_id,
                           "timestamp": 1}]).accepted == 1


def _recreate(payload, queue_id: str):
    Queue.objects.get(queue_id=queue_id).delete()
    queue, _ = queue_create(payload=payload, queue_id=queue_id)
    _with_telemetry(queue)
    return queue


def test_a_queue_deleted_and_recreated_in_one_batch_keeps_the_new_queues_documents(mirror, historical_payload):
    """Issue #12 mirror bug, case "both outbox rows land in one batch": the write of the new queue and the
    delete of the old one are in the same batch; the new queue, its steps, edges and telemetry stay."""
    old, _ = queue_create(payload=historical_payload, queue_id="same-id")
    _with_telemetry(old)
    mirror_drain()
    new = _recreate(historical_payload, "same-id")
    assert mirror_drain().batches == 1  # one batch holds the delete and the re-creation
    assert set(mirror.docs("queues")) == {"same-id"}
    actual = assert_mirror_matches_postgres(mirror)
    assert actual["queues"]["same-id"]["created_at"] == new.created_at.isoformat()
    assert len(actual["telemetry"]) == 1 and len(actual["steps"]) == new.steps.count()


def test_a_slow_drain_deleting_the_old_queue_late_keeps_the_new_queues_documents(mirror, historical_payload):
    """Issue #12 mirror bug, case "overlapping drains": a drain claims the old queue's delete, a newer drain
    writes the re-created queue first, then the slow drain's delete arrives; the new documents stay."""
    old, _ = queue_create(payload=historical_payload, queue_id="slow-delete")
    _with_telemetry(old)
    mirror_drain()
    old.delete()
    slow_version, slow_rows = sync._claim(100)
    slow_batch, slow_deleted = sync._build(slow_version, slow_rows)
    assert slow_deleted["queue"] == ["slow-delete"]
    queue, _ = queue_create(payload=historical_payload, queue_id="slow-delete")
    _with_telemetry(queue)
    mirror_drain()  # the newer drain (the slow one's rows are leased: not claimed again)
    assert "slow-delete" in mirror.docs("queues")
    sync._settle(slow_rows, sync._write(arango.connect(), slow_batch, slow_deleted), sync.DrainResult())
    assert set(mirror.docs("queues")) == {"slow-delete"}
    assert_mirror_matches_postgres(mirror)
    assert not MirrorOutbox.objects.exists()
