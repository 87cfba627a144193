"""Issue #13, "Atomic version guard": the version comparison happens on the server, in the write."""
import pytest

from mirror import arango, sync
from mirror.sync import Batch, mirror_drain, next_version
from queues.models import Queue, StepState
from jobs.services import queue_refresh_status
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def test_an_older_resync_batch_never_overwrites_a_drain_that_lands_between_its_requests(mirror,
                                                                                         historical_payload):
    """Case: a resync beside a drain; the drain's newer documents land between two requests of the
    resync's write (after its first one was applied), which let the older state win with read-compare-write."""
    queue, _ = queue_create(payload=historical_payload, queue_id="race")
    db = arango.connect()
    older = Batch(next_version())  # what a resync read before the change
    older.add_queue(Queue.objects.get(pk=queue.pk))
    for step in queue.steps.select_related("queue"):
        older.add_step(step)
    for step in queue.steps.all():
        step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    queue_refresh_status(queue=queue)
    newer = Batch(next_version())  # what the drain read after it
    newer.add_queue(Queue.objects.get(pk=queue.pk))
    for step in queue.steps.select_related("queue"):
        newer.add_step(step)

    emulator, fired = mirror.emulator, []

    def drain_lands(entry):
        if not fired and entry["method"] == "POST" and entry["path"].endswith("/_api/cursor"):
            fired.append(entry)
            assert sync.write_batch(arango.connect(ensure=False), newer) == {}

    emulator.after_request = drain_lands
    try:
        assert sync.write_batch(db, older) == {}
    finally:
        emulator.after_request = None

    assert fired, "the drain never got between the resync's requests"
    assert mirror.docs("queues")["race"]["status"] == "running"
    assert {doc["state"] for doc in mirror.docs("steps").values()} == {"launching"}
    assert {doc["version"] for doc in mirror.docs("steps").values()} == {newer.version}
    assert_mirror_matches_postgres(mirror)


def test_it_deletes_many_documents_in_one_request(mirror):
    """Case: bulk deletes in one request instead of one per key; missing keys are fine."""
    db = arango.connect()
    db.collection("telemetry").insert_many([{"_key": f"e{i}", "version": 1} for i in range(30)])
    before = len(mirror.emulator.requests)
    assert arango.delete_keys(db, "telemetry", [f"e{i}" for i in range(25)] + ["missing"]) == 25
    assert len(mirror.emulator.requests) - before == 1
    assert set(mirror.docs("telemetry")) == {f"e{i}" for i in range(25, 30)}


def test_a_guarded_delete_keeps_documents_a_newer_writer_wrote(mirror):
    """Case: a stale-edge or orphan delete only removes documents older than its own version."""
    db = arango.connect()
    db.collection("queues").insert_many([{"_key": "old", "version": 5}, {"_key": "new", "version": 9},
                                         {"_key": "unversioned"}])
    assert arango.delete_keys(db, "queues", ["old", "new", "unversioned"], older_than=7) == 2
    assert set(mirror.docs("queues")) == {"new"}


def test_a_delete_by_row_removes_that_rows_documents_whatever_their_version(mirror):
    """Issue #12 mirror bug (killed drain / rewritten key): `delete_owned` removes the documents of the deleted
    rows (`pg_id`) even when newer than the deleting batch, keeps another row's document under the same key,
    and falls back to the version guard for documents written before `pg_id` (one query, on the server)."""
    db = arango.connect()
    db.collection("queues").insert_many([{"_key": "a", "pg_id": 1, "version": 9},
                                         {"_key": "b", "pg_id": 2, "version": 1},
                                         {"_key": "legacy-old", "version": 3},  # written before pg_id
                                         {"_key": "legacy-new", "version": 9}])
    assert arango.delete_owned(db, "queues", ["a", "b", "legacy-old", "legacy-new"], [1], older_than=5) == 2
    assert set(mirror.docs("queues")) == {"b", "legacy-new"}


def test_a_drain_still_converges_after_the_guard_moved_to_the_server(mirror, historical_payload):
    """Case: the UPSERT form writes, skips equal/older versions and reports counts like before."""
    queue_create(payload=historical_payload, queue_id="converge")
    mirror_drain()
    db = arango.connect()
    again = arango.upsert_versioned(db, "queues", [mirror.docs("queues")["converge"]])
    assert (again.written, again.skipped) == (0, 1)
    assert_mirror_matches_postgres(mirror)
