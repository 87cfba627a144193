"""Issue #12 (telemetry ingestion): how events are written. The rows go in with one COPY whose text
the ingestion formats itself; what it stores must be exactly what was sent, whatever characters
COPY's text format gives a meaning to (tab, newline, carriage return, backslash)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from jobs.telemetry import ingest_events
from queues.models import StepState, TelemetryEvent
from tests.jobs.helpers import put, step_of
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

LOADER = ("loader-producer", "api_candles_5m")
AWKWARD = "tab\there, new\nline, return\r, back\\slash, \\N, \\t, caf\u00e9 \u2603"


@pytest.fixture
def queue():
    return make_queue(queue_id="tel-store-q")


def test_text_with_copy_s_special_characters_is_stored_as_sent(queue):
    """Storing: a lifecycle event (own row) and a pong of an unknown producer (no step, no run) whose
    message, producer and payload hold tabs, newlines, carriage returns, backslashes and COPY's own
    escapes are stored exactly; so are the text's raw whitespace between tokens, the times and counts."""
    loader = put(step_of(queue, LOADER), StepState.LAUNCHING, run=3)
    started = {"event": "started", "queue_id": queue.queue_id, "producer": loader.telemetry_id,
               "message": AWKWARD, "records_written": 7, "timestamp": 1717200000.25, "note": AWKWARD}
    pong = {"event": "pong", "queue_id": queue.queue_id, "producer": "odd\tone\\\n", "message": AWKWARD}
    # As a worker may send it: whitespace (tabs, CR LF) between the tokens, kept in the stored text.
    texts = [json.dumps(started, indent="\t", ensure_ascii=False).replace("\n", "\r\n"), json.dumps(pong)]

    result = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)

    assert (result.accepted, result.rejected) == (2, [])
    rows = {r.status: r for r in TelemetryEvent.objects.filter(queue=queue)}
    row = rows["started"]
    assert (row.step_id, row.producer, row.message, row.records_written) == (loader.pk, loader.telemetry_id, AWKWARD, 7)
    assert row.payload == started and row.payload["note"] == AWKWARD
    assert (row.run, row.coalesced, row.source) == (3, 1, "kafka")
    assert row.sent_at == datetime.fromtimestamp(1717200000.25, tz=timezone.utc)
    assert row.received_at is not None
    row = rows["pong"]
    assert (row.step_id, row.producer, row.message, row.run, row.sent_at) == (None, "odd\tone\\\n", AWKWARD, None, None)
    assert row.payload == pong


def test_a_coalesced_row_keeps_its_last_report_s_text_and_numbers(queue):
    """Storing, coalesced: the row of several plain reports holds the last report's text (with its
    backslash escapes), the highest count, the report count and the last time."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    reports = [{"event": "loading", "queue_id": queue.queue_id, "producer": loader.telemetry_id,
                "records_written": n, "timestamp": 1717200000 + n, "message": "path C:\\data\\x"} for n in (4, 9, 6)]
    texts = [json.dumps(raw) for raw in reports]
    assert "\\\\" in texts[-1]  # the JSON text itself holds backslashes

    result = ingest_events([json.loads(t) for t in texts], source="kafka", texts=texts)

    assert (result.accepted, result.rejected) == (3, [])
    [row] = TelemetryEvent.objects.filter(step=loader)
    assert (row.records_written, row.coalesced, row.message) == (9, 3, "path C:\\data\\x")
    assert row.payload == reports[-1]
    assert row.sent_at == datetime.fromtimestamp(1717200006, tz=timezone.utc)


@pytest.mark.django_db(transaction=True)
def test_a_batch_holds_its_queues_locked_until_it_commits():
    """Locking: while a batch is applied, each queue it names is locked for changes (another writer's
    FOR NO KEY UPDATE of it waits; NOWAIT is refused), and a queue it does not name is not."""
    from django.db import OperationalError, connections

    from queues.models import Queue
    from queues.signals import telemetry_ingested

    named, other = make_queue(queue_id="tel-lock-named"), make_queue(queue_id="tel-lock-other")
    loader = put(step_of(named, LOADER), StepState.RUNNING)
    seen: dict[str, str] = {}

    def look(sender, **kwargs):  # sent inside the batch's transaction, after its rows are stored
        elsewhere = connections.create_connection("default")
        try:
            for queue in (named, other):
                try:
                    with elsewhere.cursor() as cursor:
                        cursor.execute(f"SELECT id FROM {Queue._meta.db_table} WHERE id = %s FOR NO KEY UPDATE NOWAIT",
                                       [queue.pk])
                    seen[queue.queue_id] = "free"
                except OperationalError as exc:
                    seen[queue.queue_id] = "locked" if "lock" in str(exc) else str(exc)
        finally:
            elsewhere.close()

    telemetry_ingested.connect(look, dispatch_uid="test-telemetry-lock")
    try:
        report = {"event": "loading", "queue_id": named.queue_id, "producer": loader.telemetry_id, "records_written": 1}
        assert ingest_events([report, {**report, "queue_id": "tel-lock-missing"}]).accepted == 1
    finally:
        telemetry_ingested.disconnect(dispatch_uid="test-telemetry-lock")
    assert seen == {"tel-lock-named": "locked", "tel-lock-other": "free"}


def test_queue_ids_with_array_punctuation_are_looked_up_as_they_are(queue):
    """Matching: the batch's queue ids go to the database as one array; ids holding its punctuation
    (commas, quotes, braces, backslashes, NULL) are unknown queues, and a real one among them matches."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    odd = ['a,b', '"q"', "{x}", "back\\slash", "NULL", " ", "tel-store-q,tel-store-q"]
    batch = [{"event": "loading", "queue_id": queue_id, "producer": loader.telemetry_id, "records_written": 1}
             for queue_id in odd]
    batch.append({"event": "loading", "queue_id": queue.queue_id, "producer": loader.telemetry_id, "records_written": 2})

    result = ingest_events(batch)

    assert result.rejected == [(i, f"unknown queue {queue_id!r}") for i, queue_id in enumerate(odd)]
    assert result.accepted == 1
    loader.refresh_from_db()
    assert loader.records_written == 2


def test_an_event_the_database_refuses_is_rejected_alone_at_each_of_its_positions(queue, monkeypatch):
    """Storing, refused: when the database refuses the batch's COPY, its events are stored one by one;
    the one it refuses is rejected at every position it stands for (a coalesced event: each of its
    reports) with the database's reason, and the rest are stored and applied."""
    import psycopg

    from jobs import telemetry_store

    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    real = telemetry_store._copy

    def copy(rows, queues, source):
        rows = list(rows)
        if any(event.message == "poison" for event, _ in rows):
            raise psycopg.errors.DataError("invalid input for jsonb\nDETAIL: the poison")
        return real(rows, queues, source)

    monkeypatch.setattr(telemetry_store, "_copy", copy)
    report = {"event": "loading", "queue_id": queue.queue_id, "producer": loader.telemetry_id}
    batch = [{**report, "records_written": 5, "message": "poison"}, {**report, "records_written": 3},
             {**report, "records_written": 6, "message": "poison"},
             {"event": "pong", "queue_id": queue.queue_id, "producer": "someone-else"}]

    result = ingest_events(batch)

    reason = "cannot be stored: invalid input for jsonb"
    assert result.rejected == [(0, reason), (2, reason)]
    assert result.accepted == 2
    assert result.duplicates == 0  # every report is accepted or rejected once, none counted twice
    assert sorted(TelemetryEvent.objects.filter(queue=queue).values_list("status", "records_written")) == [
        ("loading", 3), ("pong", None)]
    loader.refresh_from_db()
    assert loader.records_written == 3
