"""Telemetry ingestion at batch scale (issue #12, `telemetry_ingest`): what the fast path must keep.

Exactly-once in effect across and inside batches, a cost per batch that does not grow with the
batch, the cheaper telemetry rows (no per-row foreign-key checks, no prefix index) and the inline
reading of the common event giving the same verdicts as the careful one.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from jobs.signals import telemetry_counted
from jobs.telemetry import ingest_events
from jobs.telemetry_input import InvalidEvent, normalize
from queues.models import Queue, StepState, TelemetryEvent
from tests.jobs.helpers import put, step_of
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

LOADER = ("loader-producer", "api_candles_5m")


@pytest.fixture
def queue():
    return make_queue(queue_id="tel-batch-q")


def _running_steps(queue):
    return [put(step, StepState.RUNNING) for step in queue.steps.order_by("position")]


def _event(step, n: int, **fields) -> dict:
    return {"event": "loading", "queue_id": step.queue.queue_id, "producer": step.telemetry_id,
            "records_written": n, "timestamp": 1717200000 + n, **fields}


@pytest.fixture
def counted():
    """What the telemetry counters receive (ops metrics), summed over the test."""
    seen: list[int] = []

    def receiver(sender, count, **kwargs):
        seen.append(count)

    telemetry_counted.connect(receiver, dispatch_uid="test-telemetry-batch")
    yield seen
    telemetry_counted.disconnect(dispatch_uid="test-telemetry-batch")


def test_duplicates_inside_one_batch_and_across_two_batches_are_stored_applied_and_counted_once(queue, counted):
    """Issue #12 (ingestion): the same event twice in one batch, and again in the next batch (a Kafka
    redelivery), is one row, one count and one application; records_written keeps the highest.
    Events that keep a row each (here `started`; plain progress reports are coalesced, see
    test_telemetry_coalesce)."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    one, two, three = (_event(step, n, event="started") for n in (10, 20, 30))

    first = ingest_events([one, two, dict(one)])
    second = ingest_events([dict(two), three, dict(one), dict(three)])

    assert (first.accepted, first.duplicates) == (2, 1)
    assert (second.accepted, second.duplicates) == (1, 3)
    assert TelemetryEvent.objects.filter(step=step).count() == 3
    assert sorted(TelemetryEvent.objects.filter(step=step).values_list("records_written", flat=True)) == [10, 20, 30]
    assert sum(counted) == 3
    step.refresh_from_db()
    assert step.records_written == 30 and step.state == StepState.RUNNING


def test_a_batch_costs_the_same_queries_for_ten_events_as_for_three_hundred(queue):
    """Issue #12 (ingestion): per batch, a fixed number of statements (lookups, one key check, one
    COPY, one progress UPDATE) whatever its size; every report is still counted and applied, as one
    row per step per batch (plain progress reports are coalesced)."""
    steps = _running_steps(queue)

    def batch(start: int, size: int) -> list[dict]:
        return [_event(steps[n % len(steps)], start + n) for n in range(size)]

    small_batch, large_batch = batch(0, 10), batch(1000, 300)
    with CaptureQueriesContext(connection) as small:
        assert ingest_events(small_batch).accepted == 10
    with CaptureQueriesContext(connection) as large:
        assert ingest_events(large_batch).accepted == 300

    assert len(large.captured_queries) == len(small.captured_queries), [q["sql"][:80] for q in large.captured_queries]
    assert TelemetryEvent.objects.filter(queue=queue).count() == 2 * len(steps)
    assert TelemetryEvent.objects.filter(queue=queue).aggregate(n=Sum("coalesced"))["n"] == 310
    for step in steps:
        step.refresh_from_db()
    # Each step's highest count of the second batch: 1000 + the last n that landed on it.
    assert sorted(s.records_written for s in steps) == [1000 + n for n in range(300 - len(steps), 300)]


def test_telemetry_rows_have_no_per_row_database_checks_and_still_go_with_their_queue(queue):
    """Issue #12 (ingestion): no foreign-key trigger per stored event and no LIKE-prefix index on the
    key (migration 0011); deleting a queue through the ORM still deletes its events."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    ingest_events([_event(step, 1), _event(step, 2)])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
            [TelemetryEvent._meta.db_table],
        )
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TelemetryEvent._meta.db_table])
        assert not [d for (d,) in cursor.fetchall() if "pattern_ops" in d]

    Queue.objects.filter(pk=queue.pk).delete()
    assert not TelemetryEvent.objects.filter(queue_id=queue.pk).exists()


def _base(**fields) -> dict:
    return {"event": "loading", "queue_id": "q", "producer": "p", **fields}


@pytest.mark.parametrize(
    "raw, expected",
    [
        (_base(event="LOADING"), {"status": "loading"}),
        (_base(event="", status="Progress"), {"status": "progress"}),
        (_base(event=None, status="started"), {"status": "started"}),
        (_base(producer="", telemetry_id="t"), {"producer": "t"}),
        (_base(error_message="", message="m"), {"message": "m"}),
        (_base(error_message="boom", message="m"), {"message": "boom"}),
        (_base(records_written=None, message_count=7), {"records_written": 7}),
        (_base(records_written=2.0), {"records_written": 2}),
        (_base(timestamp=-1), {"sent_at": datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc)}),
        (_base(timestamp=0), {"sent_at": datetime(1970, 1, 1, tzinfo=timezone.utc)}),
        (_base(timestamp=5, sent_at=9), {"sent_at": datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc)}),
        (_base(sent_at="2024-06-01T00:00:00"), {"sent_at": datetime(2024, 6, 1, tzinfo=timezone.utc)}),
        (_base(run="3"), {"run": 3}),
    ],
)
def test_the_inline_reading_of_common_fields_agrees_with_the_careful_one(raw, expected):
    """Issue #12 (ingestion): the plain-string/int shortcuts of normalize() read every other shape
    exactly as before (dialects, case, fallbacks, epoch and ISO times)."""
    event = normalize(raw)
    assert {key: getattr(event, key) for key in expected} == expected


@pytest.mark.parametrize(
    "raw, named",
    [
        (_base(records_written=True), "records_written"),
        (_base(records_written=-1), "records_written"),
        (_base(error_message=5, message="m"), "error_message"),
        (_base(event=1, status="loading"), "event"),
        (_base(queue_id="q" * 41), "queue_id"),
        (_base(producer="p" * 101), "producer"),
        (_base(timestamp=10**12), "timestamp"),
        (_base(timestamp=1, sent_at="soon"), "sent_at"),
    ],
)
def test_the_inline_reading_refuses_what_the_careful_one_refuses(raw, named):
    """Issue #12 (ingestion): a value the shortcut does not take falls through to the checks that
    name the field (issue #10 §1)."""
    with pytest.raises(InvalidEvent, match=named):
        normalize(raw)


def test_a_state_change_announces_the_advance_readably_without_a_query(queue, django_capture_on_commit_callbacks):
    """Issue #12 (ingestion, launch path): the advance a batch announces carries Flower's readable
    arguments from the queue ids ingestion already holds, not from one lookup per announced task."""
    from jobs.announce import QUEUE_ADVANCE
    from tests.jobs.test_announce import last_sent

    step = put(step_of(queue, LOADER), StepState.RUNNING)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert ingest_events([_event(step, 5, event="finished")]).changed_queues == {queue.pk}
    with CaptureQueriesContext(connection) as sending:
        for callback in callbacks:
            callback()

    assert [q["sql"] for q in sending.captured_queries] == []
    assert last_sent(QUEUE_ADVANCE, [queue.pk])["argsrepr"] == "(queue=tel-batch-q)"
