"""Issue #12 (mirror lag p99 <= 1 s at 1,000 changes/s): the drain overlaps claiming and building the
next batch with writing the current one, and keeps its guarantees while doing so (a failed write
loses nothing, a killed drain's rows come back, an older state never wins). Behaviour, not timings."""
import threading

import pytest
from django.db.models import F

from mirror import outbox, sync
from mirror.arango import MirrorUnavailable
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from queues.models import QueueRequest
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db

WAIT = 10  # seconds a held write waits for the next batch's build; only reached when nothing overlaps


def _six_changed_steps(payload):
    queue_create(payload=payload, queue_id="pipe")
    mirror_drain()
    steps = list(QueueRequest.objects.order_by("pk"))
    QueueRequest.objects.filter(pk__in=[s.pk for s in steps]).update(records_written=F("records_written") + 7)
    outbox.record_many("step", [s.pk for s in steps])
    return steps


def _count_builds(monkeypatch) -> threading.Event:
    """An event set when the drain has built its second batch."""
    built, second = [], threading.Event()
    real_build = sync._build

    def build(version, rows):
        out = real_build(version, rows)
        built.append(len(rows))
        if len(built) == 2:
            second.set()
        return out

    monkeypatch.setattr(sync, "_build", build)
    return second


def _on_first_query(emulator, action):
    """Run `action` (in the emulator's request thread) after the first query of the drain's write."""
    seen = []

    def hook(entry):
        if entry.get("query") and not seen:
            seen.append(action())

    emulator.after_request = hook
    return seen


def test_the_next_batch_is_claimed_and_built_while_one_is_written(mirror, historical_payload, monkeypatch):
    """Issue #12, case "the next claim overlapped with the current write": while the first batch's
    write is held at ArangoDB, the drain has already claimed and built the second batch (before, a
    drain claimed, built, wrote and finished one batch after the other, so a change waited for the
    whole cycle of the batch in flight and then for its own)."""
    steps = _six_changed_steps(historical_payload)
    second_built = _count_builds(monkeypatch)
    overlapped = _on_first_query(mirror.emulator, lambda: second_built.wait(WAIT))
    try:
        result = mirror_drain(batch_size=3)
    finally:
        mirror.emulator.after_request = None
    assert overlapped == [True]
    assert (result.batches, result.synced, result.failed) == (2, len(steps), 0)
    assert not MirrorOutbox.objects.exists()
    assert_mirror_matches_postgres(mirror)


def test_a_failed_write_releases_the_batch_in_flight_and_the_one_built_beside_it(mirror, historical_payload,
                                                                                  monkeypatch):
    """Issue #12, case "a failed write retries; nothing lost" with two batches claimed at once: ArangoDB
    goes away during the first batch's write, after the drain claimed the second; both batches' rows
    are released (not left leased for minutes), and the next drain writes everything."""
    steps = _six_changed_steps(historical_payload)
    second_built = _count_builds(monkeypatch)
    emulator = mirror.emulator

    def outage():
        overlapped = second_built.wait(WAIT)
        emulator.go_down()
        return overlapped

    overlapped = _on_first_query(emulator, outage)
    try:
        with pytest.raises(MirrorUnavailable):
            mirror_drain(batch_size=3)
    finally:
        emulator.after_request = None
    assert overlapped == [True]
    assert MirrorOutbox.objects.count() == len(steps)
    assert not MirrorOutbox.objects.filter(claimed_until__isnull=False).exists()

    mirror.come_back()
    assert mirror_drain(batch_size=3).synced == len(steps)
    assert not MirrorOutbox.objects.exists()
    assert_mirror_matches_postgres(mirror)


def test_the_rows_of_a_killed_drain_come_back_when_their_lease_ends(mirror, historical_payload):
    """Issue #12, case "nothing lost when the drain's worker is killed": a drain that dies with two
    batches claimed (one written, one only built) leaves its rows leased; once the lease is over the
    next drain takes them and the mirror equals PostgreSQL."""
    steps = _six_changed_steps(historical_payload)
    v1, first = sync._claim(3)
    sync._build(v1, first)
    v2, second = sync._claim(3)
    assert len(first) == len(second) == 3 and v2 > v1
    assert mirror_drain().synced == 0  # leased: not taken twice while the dead drain's lease runs
    MirrorOutbox.objects.update(claimed_until=F("claimed_until") - sync.LEASE)  # the lease is over
    assert mirror_drain().synced == len(steps)
    assert not MirrorOutbox.objects.exists()
    assert_mirror_matches_postgres(mirror)
