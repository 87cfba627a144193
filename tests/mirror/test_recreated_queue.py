"""A queue deleted and re-created with the same queue_id (the admin deletes queues; clients may choose
queue_id): the delete of the old queue's documents must never remove the new queue's, which have the
same keys — neither when both changes are drained in one batch, nor when a slow drain deletes late, nor
when a drain died holding the delete and it comes back after the lease. And a delete removes every document
of the queue, also when its queue_id is one `safe_key` rewrites."""
import pytest
from django.utils import timezone

from jobs.submission import queue_create
from jobs.telemetry import ingest_events
from mirror import arango, sync
from mirror import documents as d
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from queues.models import Queue, StepState

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def _with_telemetry(queue, timestamp: int = 1) -> None:
    loader = queue.steps.get(name="loader-producer-api-trades")
    loader.transition(StepState.PENDING, from_states=[StepState.WAITING])
    assert ingest_events([{"event": "started", "queue_id": queue.queue_id, "producer": loader.telemetry_id,
                           "timestamp": timestamp}]).accepted == 1


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
    old_pk = old.pk
    old.delete()
    slow_version, slow_rows = sync._claim(100)
    slow_batch, slow_deleted = sync._build(slow_version, slow_rows)
    assert slow_deleted["queue"] == [("slow-delete", old_pk)]
    queue, _ = queue_create(payload=historical_payload, queue_id="slow-delete")
    _with_telemetry(queue)
    mirror_drain()  # the newer drain (the slow one's rows are leased: not claimed again)
    assert "slow-delete" in mirror.docs("queues")
    sync._settle(slow_rows, sync._write(arango.connect(), slow_batch, slow_deleted), sync.DrainResult())
    assert set(mirror.docs("queues")) == {"slow-delete"}
    assert_mirror_matches_postgres(mirror)
    assert not MirrorOutbox.objects.exists()


def test_a_delete_whose_drain_died_keeps_the_queue_recreated_meanwhile(mirror, historical_payload):
    """Issue #12 mirror bug, case "killed drain": a drain claims the old queue's delete and dies holding it;
    the queue is re-created with the same queue_id and mirrored; after the lease the delete comes back with a
    NEWER version than the new documents. It must still remove only the old queue's documents."""
    old, _ = queue_create(payload=historical_payload, queue_id="killed-drain")
    _with_telemetry(old)
    mirror_drain()
    old_events = set(mirror.docs("telemetry"))
    old.delete()
    _, dead_rows = sync._claim(100)  # the drain that dies: claimed, never written, never released
    assert {r.doc_key for r in dead_rows if r.kind == "queue"} == {"killed-drain"}
    new, _ = queue_create(payload=historical_payload, queue_id="killed-drain")
    _with_telemetry(new, timestamp=2)  # another event key than the old queue's event
    mirror_drain()  # the re-created queue is written (the dead drain's rows are leased)
    assert set(mirror.docs("telemetry")) & old_events  # the old queue's event documents are still there
    MirrorOutbox.objects.filter(pk__in=[r.pk for r in dead_rows]).update(claimed_until=timezone.now())  # lease over
    result = mirror_drain()
    assert result.synced == len(dead_rows) and not MirrorOutbox.objects.exists()
    actual = assert_mirror_matches_postgres(mirror)  # new queue, steps, edges, telemetry; none of the old ones
    assert actual["queues"]["killed-drain"]["created_at"] == new.created_at.isoformat()
    assert not set(actual["telemetry"]) & old_events


def test_deleting_a_queue_whose_id_safe_key_rewrites_removes_all_its_telemetry(mirror, historical_payload):
    """Issue #12 mirror bug, case "rewritten key": a queue_id outside ArangoDB's key alphabet (the model takes any
    40 characters; the API only DNS labels, so e.g. a row written by the admin or before validation) gets a
    rewritten document key; deleting the queue must still remove every telemetry document of it."""
    queue, _ = queue_create(payload=historical_payload, queue_id="to-rename")
    Queue.objects.filter(pk=queue.pk).update(queue_id="Ops queue/7")
    queue.refresh_from_db()
    assert d.queue_key(queue.queue_id) != queue.queue_id
    _with_telemetry(queue)
    mirror_drain()
    assert {doc["queue_id"] for doc in mirror.docs("telemetry").values()} == {"Ops queue/7"}
    queue.delete()
    mirror_drain()
    assert mirror.docs("telemetry") == {} and mirror.docs("queues") == {}
    assert_mirror_matches_postgres(mirror)


def test_documents_from_before_pg_id_are_still_deleted_with_their_queue(mirror, historical_payload):
    """Upgrade path of the case "rewritten key": documents written before they carried `pg_id`/`queue_pg_id`
    go by the version guard, and the queue's telemetry by the queue_id stored on the queue's document."""
    queue, _ = queue_create(payload=historical_payload, queue_id="to-rename")
    Queue.objects.filter(pk=queue.pk).update(queue_id="Ops queue/8")
    queue.refresh_from_db()
    _with_telemetry(queue)
    mirror_drain()
    for collection in ("queues", "steps", "telemetry"):  # as an older release wrote them
        docs = [{k: v for k, v in doc.items() if k not in ("pg_id", "queue_pg_id")}
                for doc in mirror.docs(collection).values()]
        mirror.db.collection(collection).truncate()
        mirror.db.collection(collection).insert_many(docs)
    assert not any("pg_id" in doc for doc in mirror.docs("queues").values())
    queue.delete()
    mirror_drain()
    assert mirror.docs("telemetry") == {} and mirror.docs("queues") == {} and mirror.docs("steps") == {}
