"""The event history of telemetry ingestion (DESIGN §6, issue #12): a batch's events as TelemetryEvent rows.

Each event is stored once: its key (a content hash that covers its run, jobs.telemetry_input) is
unique, and only the events not stored before are returned, the ones ingestion then applies to
their steps. What the database refuses (e.g. a string jsonb cannot hold) is handed back with the
reason, to be refused alone, so no input can block a consumer. The caller (jobs.telemetry) matches
the events to their steps first and holds their queues' locks.
"""
from __future__ import annotations

import logging

import psycopg
from django.db import DataError, connection, transaction
from django.utils import timezone

from jobs.telemetry_input import Event
from queues.models import TelemetryEvent

logger = logging.getLogger(__name__)

_STORE_COLUMNS = (
    "queue_id", "step_id", "event_key", "status", "producer", "records_written",
    "message", "payload", "source", "sent_at", "received_at", "run", "coalesced",
)


def store_events(matched: list, queues: dict, source: str) -> tuple[list, list[tuple[Event, str]]]:
    """Store a batch's (event, step) pairs (step: its row with an `id`, or None for a pong of no
    step); returns (new, refused): the pairs not seen before, now stored, and the events the
    database refused, each with the reason. The batch goes in whole if it can; else its events
    go in one by one, each in a savepoint of its own."""
    try:
        with transaction.atomic():
            return _store_new(matched, queues, source), []
    except (DataError, psycopg.DataError):
        logger.warning("a telemetry batch could not be stored whole; storing its events one by one")
    new, refused = [], []
    for event, step in matched:
        try:
            with transaction.atomic():
                new.extend(_store_new([(event, step)], queues, source))
        except (DataError, psycopg.DataError) as exc:
            refused.append((event, f"cannot be stored: {str(exc).splitlines()[0]}"))
    return new, refused


def _store_new(matched: list, queues: dict, source: str) -> list:
    """Store the events not seen before and return those (the ones to apply).

    Optimistic: in the steady state no event of a batch was stored before, so the batch goes in with
    one COPY (the fastest way into PostgreSQL) and the unique index on event_key is the only check.
    A batch delivered again (a consumer restart, a rebalance) fails that COPY on its first known key;
    then the known keys are looked up at once and only the others are copied. No other writer can
    insert the same key meanwhile: an event's key covers its queue_id, and the caller holds that
    queue's lock.
    """
    unique: dict[str, tuple] = {}
    for event, step in matched:
        unique.setdefault(event.key, (event, step))
    if not unique:
        return []
    try:
        with transaction.atomic():  # a savepoint: the failed COPY is undone, the batch goes on
            _copy(unique.values(), queues, source)
        return list(unique.values())
    except psycopg.errors.UniqueViolation:
        pass
    with connection.cursor() as cursor:
        # The keys are hex digests: one space-separated text is split by the server, instead of a
        # text[] parameter that the driver quotes element by element (a regex per key).
        table = TelemetryEvent._meta.db_table
        cursor.execute(f"SELECT event_key FROM {table} WHERE event_key = ANY(string_to_array(%s, ' '))", [" ".join(unique)])
        for (key,) in cursor.fetchall():
            del unique[key]
    if unique:
        _copy(unique.values(), queues, source)
    return list(unique.values())


def _copy(rows, queues: dict, source: str) -> None:
    # The COPY text is formatted here, a line per row: the driver's row writer dumped each value
    # through a per-column dumper and cost several times this (issue #12). Numbers and hex keys
    # need no escaping, statuses are STATUSES, times are ISO 8601 (UTC, aware); strings go
    # through _copy_text. The server parses each column as it would a dumped value.
    now = timezone.now().isoformat()
    source = _copy_text(source)
    lines = []
    append = lines.append
    for event, step in rows:
        sent_at, records, run = event.sent_at, event.records_written, event.run
        append("\t".join((
            str(queues[event.queue_id]), "\\N" if step is None else str(step.id), event.key, event.status,
            _copy_text(event.producer[:100]), "\\N" if records is None else str(records), _copy_text(event.message),
            _copy_text(event.text), source, "\\N" if sent_at is None else sent_at.isoformat(), now,
            "\\N" if run is None else str(run), str(event.coalesced),
        )))
    append("")  # the last line's newline
    table = TelemetryEvent._meta.db_table
    with connection.cursor() as cursor:
        # psycopg's COPY on the same connection, inside the caller's transaction.
        with cursor.cursor.copy(f"COPY {table} ({', '.join(_STORE_COLUMNS)}) FROM STDIN") as copy:
            copy.write("\n".join(lines))


# COPY's text format gives a meaning to these four; everything else is taken literally.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_text(value: str) -> str:
    """A string as a COPY text column (NUL cannot occur: ingestion refuses it before)."""
    if "\\" in value or "\n" in value or "\r" in value or "\t" in value:
        return value.translate(_COPY_ESCAPES)
    return value  # the usual text (JSON as sent, without a backslash escape): as is
