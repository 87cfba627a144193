"""Issue #12 (mirror lag at 1,000 changes/s): a step change rewrites its lineage (edges, data-collection
vertices) only when the step's reads/writes differ from its stored document, and the lineage stays
right whatever request a drain is cut off after."""
import pytest
from django.db.models import F

from mirror import documents as d
from mirror import outbox
from mirror.arango import MirrorUnavailable
from mirror.models import MirrorOutbox
from mirror.resync import mirror_resync
from mirror.sync import mirror_drain
from queues.models import QueueRequest
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def _versions(mirror, collection):
    return {key: doc["version"] for key, doc in mirror.docs(collection).items()}


def _reading_step(queue) -> QueueRequest:
    """A step that reads a data collection through `collection_inputs` (the graph builder)."""
    return next(s for s in queue.steps.order_by("position") if s.target == "graph-builder")


def test_a_progress_change_rewrites_the_step_and_not_its_lineage(mirror, historical_payload):
    """Issue #12, case "per-document cost of a drain": most changes at 1,000 changes/s are progress
    and state; before, every step change rewrote the step's queue→step, read and write edges (and
    read them back to find stale ones), three times the documents of the change itself."""
    queue, _ = queue_create(payload=historical_payload, queue_id="prog")
    mirror_drain()
    edges_before = {name: _versions(mirror, name) for name in d.EDGE_COLLECTIONS}
    steps_before = _versions(mirror, d.STEPS)
    QueueRequest.objects.filter(queue=queue).update(records_written=F("records_written") + 5)
    outbox.record_many("step", list(queue.steps.values_list("pk", flat=True)))

    assert mirror_drain().synced == 6
    assert {name: _versions(mirror, name) for name in d.EDGE_COLLECTIONS} == edges_before
    assert all(v > steps_before[k] for k, v in _versions(mirror, d.STEPS).items())
    assert_mirror_matches_postgres(mirror)


def test_a_changed_lineage_is_relinked(mirror, historical_payload):
    """Issue #12: the cut above must not miss a real lineage change (reads/writes edited in
    PostgreSQL): the stale edge goes, the new one and its data-collection vertex come."""
    queue, _ = queue_create(payload=historical_payload, queue_id="relink")
    mirror_drain()
    step = _reading_step(queue)
    QueueRequest.objects.filter(pk=step.pk).update(collection_inputs=["relinked_input"])
    outbox.record_many("step", [step.pk])
    mirror_drain()
    docs = assert_mirror_matches_postgres(mirror)
    assert "relinked_input" in docs[d.COLLECTIONS]


@pytest.mark.parametrize("cut_after", range(1, 9))
def test_the_lineage_converges_whatever_request_a_drain_is_cut_off_after(mirror, historical_payload, cut_after):
    """Issue #12, case "nothing lost when the drain's worker is killed" for the lineage cut: a step
    document is written only after its edges, so a drain cut off between the two leaves a document
    whose stored reads/writes still differ, and the next drain relinks it."""
    queue, _ = queue_create(payload=historical_payload, queue_id=f"cut{cut_after}")
    mirror_drain()
    step = _reading_step(queue)
    QueueRequest.objects.filter(pk=step.pk).update(collection_inputs=[f"cut_input_{cut_after}"],
                                                   records_written=F("records_written") + 1)
    outbox.record_many("step", list(queue.steps.values_list("pk", flat=True)))
    emulator, seen = mirror.emulator, []

    def cut(entry):
        seen.append(entry)
        if len(seen) == cut_after:
            emulator.go_down()

    emulator.after_request = cut
    try:
        mirror_drain()
    except MirrorUnavailable:
        pass
    finally:
        emulator.after_request = None
        if not emulator.is_up:
            mirror.come_back()
    MirrorOutbox.objects.update(claimed_until=None)  # a killed drain's lease is over
    mirror_drain()
    assert not MirrorOutbox.objects.exists()
    assert_mirror_matches_postgres(mirror)


def test_a_resync_relinks_every_step(mirror, historical_payload):
    """Issue #12: the resync repairs lineage whatever the stored step documents say (it is the tool
    for a mirror that lost documents), so it does not take the drain's shortcut."""
    queue, _ = queue_create(payload=historical_payload, queue_id="resync-relink")
    mirror_drain()
    for name in d.EDGE_COLLECTIONS:
        mirror.db.collection(name).truncate()
    mirror_resync()
    assert_mirror_matches_postgres(mirror)
