"""Plain progress reports coalesced per step per batch (issue #12, `telemetry_ingest`).

What the coalescing must keep: progress exact (the highest records_written of the step's current
run), every lifecycle event and every report that says something else in its own row with its own
key, every malformed report refused with the reason it had before, a redelivered batch adding
nothing, counters counting every report, and no row for a report that was refused.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from jobs.signals import telemetry_counted
from jobs.telemetry import ingest_events
from jobs.telemetry_input import InvalidEvent, event_key, normalize
from queues.models import StepState, TelemetryEvent
from tests.jobs.helpers import put, step_of
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

LOADER = ("loader-producer", "api_candles_5m")
TRAINER = ("loader-producer", "api_trades")


@pytest.fixture
def queue():
    return make_queue(queue_id="tel-coalesce-q")


@pytest.fixture
def counted():
    seen: list[tuple[str, int]] = []

    def receiver(sender, status, count, **kwargs):
        seen.append((status, count))

    telemetry_counted.connect(receiver, dispatch_uid="test-telemetry-coalesce")
    yield seen
    telemetry_counted.disconnect(dispatch_uid="test-telemetry-coalesce")


def _report(step, n: int, **fields) -> dict:
    return {"event": "loading", "queue_id": step.queue.queue_id, "producer": step.telemetry_id,
            "records_written": n, "timestamp": 1717200000 + n, **fields}


def _rows(step):
    return list(TelemetryEvent.objects.filter(step=step).order_by("id"))


def test_plain_progress_reports_of_a_step_in_one_batch_are_one_row(queue, counted):
    """Coalescing, the common case: one row per step per batch with the highest count, the last
    report's text, time and status, and how many reports it stands for; counters count every report."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    trainer = put(step_of(queue, TRAINER), StepState.RUNNING)
    batch = [_report(loader, n) for n in (5, 9, 7)] + [_report(trainer, n, event="progress") for n in (1, 2)]
    texts = [json.dumps(raw) for raw in batch]

    result = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)

    assert (result.accepted, result.duplicates, result.rejected) == (5, 0, [])
    [row] = _rows(loader)
    assert (row.status, row.records_written, row.coalesced) == ("loading", 9, 3)
    assert row.payload == json.loads(texts[2])  # the last report's text
    assert row.sent_at == datetime.fromtimestamp(1717200007, tz=timezone.utc)
    assert row.event_key == event_key("\n".join(texts[:3]))
    [row] = _rows(trainer)
    assert (row.status, row.records_written, row.coalesced) == ("progress", 2, 2)
    loader.refresh_from_db()
    assert (loader.records_written, loader.reported_status) == (9, "loading")
    assert sorted(counted) == [("loading", 3), ("progress", 2)]


def test_a_single_report_keeps_the_key_it_had_when_each_event_was_a_row(queue):
    """Coalescing: a group of one is stored under the very key of the per-event path, so a report
    stored before coalescing existed and delivered again alone counts once."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    raw = _report(loader, 3)
    text = json.dumps(raw)
    assert ingest_events([raw], texts=[text]).accepted == 1
    assert _rows(loader)[0].event_key == event_key(text)
    again = ingest_events([json.loads(text)], texts=[text])
    assert (again.accepted, again.duplicates) == (0, 1)


def test_lifecycle_events_and_reports_that_say_more_keep_their_own_rows(queue, counted):
    """Coalescing, what is kept: started/finished/error/interrupted each have their own row; a report
    with an error_message or extra is not coalesced; a different message or status is its own row."""
    loader = put(step_of(queue, LOADER), StepState.LAUNCHING)
    batch = [
        _report(loader, 0, event="started"),
        _report(loader, 1), _report(loader, 2),
        _report(loader, 3, message="catching up"), _report(loader, 4, message="catching up"),
        _report(loader, 5, event="progress"),
        _report(loader, 6, error_message="slow exchange"),
        _report(loader, 7, extra={"lag": 3}),
        _report(loader, 8),
        _report(loader, 9, event="finished"),
    ]
    result = ingest_events(batch)

    assert (result.accepted, result.rejected) == (10, [])
    rows = [(r.status, r.records_written, r.message, r.coalesced) for r in _rows(loader)]
    assert sorted(rows, key=lambda r: r[1]) == [
        ("started", 0, "", 1),
        ("loading", 4, "catching up", 2),
        ("progress", 5, "", 1),
        ("loading", 6, "slow exchange", 1),
        ("loading", 7, "", 1),
        ("loading", 8, "", 3),  # 1, 2 and 8: same status, no message
        ("finished", 9, "", 1),
    ]
    loader.refresh_from_db()
    assert (loader.state, loader.records_written) == (StepState.SUCCEEDED, 9)
    assert sum(count for _, count in counted) == 10


def test_a_report_moves_a_launching_step_to_running_and_the_last_event_of_the_batch_wins(queue):
    """Coalescing keeps order: the coalesced row applies where its last report was; a `finished`
    after reports still ends the step, reports before it still make a launching step run."""
    loader = put(step_of(queue, LOADER), StepState.LAUNCHING)
    ingest_events([_report(loader, 1), _report(loader, 2)])
    loader.refresh_from_db()
    assert (loader.state, loader.reported_status, loader.records_written) == (StepState.RUNNING, "loading", 2)
    ingest_events([_report(loader, 3), _report(loader, 4, event="finished"), ])
    loader.refresh_from_db()
    assert (loader.state, loader.reported_status) == (StepState.SUCCEEDED, "finished")


def test_a_redelivered_batch_adds_nothing(queue, counted):
    """Coalescing, at-least-once: the same batch again (a consumer restart) is a duplicate as a whole:
    no row, no count, no change."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    texts = [json.dumps(_report(loader, n)) for n in range(1, 6)]
    first = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)
    again = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)

    assert (first.accepted, first.duplicates) == (5, 0)
    assert (again.accepted, again.duplicates) == (0, 5)
    assert [(r.records_written, r.coalesced) for r in _rows(loader)] == [(5, 5)]
    assert sum(count for _, count in counted) == 5


def test_the_same_report_twice_in_a_batch_counts_once(queue, counted):
    """Coalescing, at-least-once inside a batch: a report repeated (even after a higher one) is one
    report, as when each event was a row; the batch says it was a duplicate."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    one, two = _report(loader, 1), _report(loader, 2)
    result = ingest_events([one, two, dict(one), dict(two), _report(loader, 3), dict(one)])
    assert (result.accepted, result.duplicates) == (3, 3)
    assert [(r.records_written, r.coalesced) for r in _rows(loader)] == [(3, 3)]
    assert sum(count for _, count in counted) == 3
    # once texts are being compared, a later report (higher count) is remembered too
    three, four = _report(loader, 3), _report(loader, 4)
    result = ingest_events([dict(three), dict(three), four, dict(four)])
    assert (result.accepted, result.duplicates) == (2, 2)  # a new group (new key): three and four, once each
    unnumbered = {k: v for k, v in one.items() if k != "records_written"}
    result = ingest_events([unnumbered, dict(unnumbered), {**unnumbered, "timestamp": 1}])
    assert (result.accepted, result.duplicates) == (2, 1)


BAD = [
    {"records_written": "12"}, {"records_written": -1}, {"records_written": 2**63}, {"records_written": True},
    {"records_written": float("nan")}, {"records_written": None, "message_count": "x"},
    {"timestamp": 10**12}, {"timestamp": "yesterday"}, {"timestamp": True}, {"timestamp": float("inf")},
    {"sent_at": "2024-02-30T00:00:00"}, {"run": 0}, {"run": True}, {"run": 2**31},
    {"queue_id": 5}, {"queue_id": "q" * 41}, {"producer": 7}, {"producer": "p" * 101},
    {"message": 5}, {"error_message": 5}, {"extra": [1]}, {"finished": "yes"}, {"event": 1, "status": "loading"},
    {"event": 0, "status": "loading"}, {"note": "nul \u0000"}, {"note": "lone \ud800"}, {"ratio": float("-inf")},
    {"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": 1}}}}}}}}}}}},
]


@pytest.mark.parametrize("fields", BAD, ids=[",".join(f) for f in BAD])
def test_a_malformed_report_in_a_coalesced_batch_is_refused_with_the_reason_it_always_had(queue, fields):
    """Coalescing, validation: a malformed progress report among good ones is refused alone, with the
    reason normalize() gives (the dead-letter reason), and stores nothing; the good ones still count."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    bad = {**_report(loader, 50), **fields}
    text = json.dumps(bad)
    with pytest.raises(InvalidEvent) as refused:
        normalize(json.loads(text), text)
    batch = [_report(loader, 1), bad, _report(loader, 2)]
    texts = [json.dumps(raw) for raw in batch]

    result = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)

    assert result.rejected == [(1, str(refused.value))]
    assert result.accepted == 2
    assert [(r.records_written, r.coalesced) for r in _rows(loader)] == [(2, 2)]
    loader.refresh_from_db()
    assert loader.records_written == 2


# What a group's reports share (queue, producer, run, message) is checked when the group is made; a
# later report finds it by equal values. These are equal to a good report's and still malformed.
SAME_KEY = [
    ({"run": 1}, {"run": True}), ({"run": 1}, {"run": 1.0}),
    ({}, {"queue_id": ["tel-coalesce-q"]}), ({}, {"producer": {"loader": 1}}), ({}, {"message": ["loading"]}),
    ({"message": "1"}, {"message": 1}), ({}, {"event": None, "status": ["loading"]}),
    ({}, {"timestamp": [1717200000]}),
]


@pytest.mark.parametrize(("shared", "fields"), SAME_KEY, ids=[",".join(f) + "=" + repr(list(f.values())) for _, f in SAME_KEY])
def test_a_malformed_report_that_finds_its_group_by_equal_values_is_refused(queue, shared, fields):
    """Coalescing, validation per group: a report whose queue, producer, run and message equal those
    of a group already made (True == 1 == 1.0, an unhashable list) is still refused alone with
    normalize's reason, and the group's reports count."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING, run=2)
    good = [_report(loader, 1, **shared), _report(loader, 2, **shared)]
    bad = {**_report(loader, 50, **shared), **fields}
    text = json.dumps(bad)
    with pytest.raises(InvalidEvent) as refused:
        normalize(json.loads(text), text)
    batch = [good[0], bad, good[1]]
    texts = [json.dumps(raw) for raw in batch]

    result = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)

    assert result.rejected == [(1, str(refused.value))]
    assert result.accepted == 2
    assert [(r.records_written, r.coalesced) for r in _rows(loader)] == [(2, 2)]


def test_a_message_absent_empty_or_null_is_one_group(queue):
    """Coalescing, grouping: normalize reads an absent, empty or null message as no message, so those
    reports are one row."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    plain = _report(loader, 1)
    result = ingest_events([plain, _report(loader, 2, message=""), _report(loader, 3, message=None)])
    assert (result.accepted, result.rejected) == (3, [])
    assert [(r.records_written, r.message, r.coalesced) for r in _rows(loader)] == [(3, "", 3)]


def test_reports_of_an_earlier_run_change_nothing_and_of_a_later_run_are_refused(queue):
    """Coalescing keeps runs: an earlier run's reports are stored for the history and change nothing;
    a later run's are refused, each with the reason; the current run's count exactly."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING, run=2, records_written=10)
    batch = [_report(loader, 500, run=1), _report(loader, 600, run=1), _report(loader, 12, run=2),
             _report(loader, 700, run=3), _report(loader, 11)]

    result = ingest_events(batch)

    reason = "invalid run: 3 has not started (step is in run 2)"
    assert result.rejected == [(3, reason)]
    assert result.accepted == 4
    loader.refresh_from_db()
    assert loader.records_written == 12
    rows = sorted((r.run, r.records_written, r.coalesced) for r in _rows(loader))
    assert rows == [(1, 600, 2), (2, 11, 1), (2, 12, 1)]


def test_reports_for_an_unknown_step_are_each_refused(queue):
    """Coalescing, matching: every report of a group that matches no step is refused with its index."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    batch = [_report(loader, 1, producer="nobody"), _report(loader, 2), _report(loader, 3, producer="nobody"),
             _report(loader, 4, queue_id="no-such-queue")]
    result = ingest_events(batch)
    assert result.rejected == [
        (0, "unknown producer 'nobody' in queue 'tel-coalesce-q'"),
        (2, "unknown producer 'nobody' in queue 'tel-coalesce-q'"),
        (3, "unknown queue 'no-such-queue'"),
    ]
    assert result.accepted == 1


def test_the_step_page_and_the_api_say_how_many_reports_a_row_stands_for(queue, client, staff_operator):
    """Coalescing, what operators see: the step page's event history says "N progress reports" for a
    coalesced row and nothing more for a single event; the events API has `coalesced`."""
    from django.urls import reverse

    client.force_login(staff_operator)
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    ingest_events([_report(loader, n) for n in (1, 2, 3)])
    ingest_events([_report(loader, 4, event="started")])
    page = client.get(reverse("admin:queues_queuerequest_change", args=[loader.pk])).content.decode()
    assert page.count("3 progress reports") == 1 and "1 progress report" not in page
    events = client.get(f"/api/queues/{queue.queue_id}/events/").json()
    rows = events["results"] if isinstance(events, dict) else events
    assert sorted((e["status"], e["coalesced"]) for e in rows) == [("loading", 3), ("started", 1)]
