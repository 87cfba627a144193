"""Telemetry ingestion (DESIGN §6): worker events → step state and progress.

One entry point, `ingest_events()`, used by the HTTP endpoint and the Kafka consumer alike. A
batch is written in one transaction: events are stored (deduplicated by a content hash), progress
is applied with one UPDATE for the whole batch, state changes go through compare-and-set
transitions. Applying the same event twice changes nothing (records_written only grows, a
transition that already happened does not happen again), so at-least-once delivery is safe.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from queues.models import Queue, QueueRequest, StepState, TelemetryEvent
from queues.signals import telemetry_ingested

logger = logging.getLogger(__name__)

STATUSES = ("started", "loading", "progress", "interrupted", "error", "finished", "pong")
PROGRESS_STATUSES = ("started", "loading", "progress")


class InvalidEvent(ValueError):
    """The event cannot be used; the message is the dead-letter reason."""


@dataclass
class Event:
    queue_id: str
    producer: str
    status: str
    raw: dict
    key: str
    records_written: int | None = None
    message: str = ""
    extra: dict | None = None
    sent_at: datetime | None = None


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)
    changed_queues: set[int] = field(default_factory=set)


def event_key(raw: dict) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def normalize(raw: object) -> Event:
    """Read either field dialect (event/status, producer/telemetry_id, records_written/message_count…)."""
    if not isinstance(raw, dict):
        raise InvalidEvent("not a JSON object")
    status = raw.get("event") or raw.get("status")
    if not status and raw.get("finished") is True:
        status = "finished"
    if not isinstance(status, str) or status.lower() not in STATUSES:
        raise InvalidEvent(f"unknown or missing status {status!r}")
    status = status.lower()
    if status == "progress" and raw.get("finished") is True:
        status = "finished"
    queue_id = raw.get("queue_id")
    if not isinstance(queue_id, str) or not queue_id:
        raise InvalidEvent("missing queue_id")
    producer = raw.get("producer") or raw.get("telemetry_id") or ""
    if not isinstance(producer, str) or (not producer and status != "pong"):
        raise InvalidEvent("missing producer/telemetry_id")
    records = raw.get("records_written", raw.get("message_count"))
    if records is not None:
        if isinstance(records, bool) or not isinstance(records, (int, float)) or records < 0:
            raise InvalidEvent(f"records_written must be a non-negative number, got {records!r}")
        records = int(records)
    extra = raw.get("extra")
    message = raw.get("error_message") or raw.get("message") or ""
    return Event(
        queue_id=queue_id,
        producer=producer,
        status=status,
        raw=raw,
        key=event_key(raw),
        records_written=records,
        message=str(message)[:2000],
        extra=extra if isinstance(extra, dict) else None,
        sent_at=_parse_time(raw.get("timestamp", raw.get("sent_at"))),
    )


def _parse_time(value) -> datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=dt_timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is not None and timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed, dt_timezone.utc)
        return parsed
    return None


def ingest_events(raw_events: list, *, source: str = "http") -> IngestResult:
    """Validate, match, store and apply a batch of events; see the module docstring."""
    result = IngestResult()
    events: list[tuple[int, Event]] = []
    for index, raw in enumerate(raw_events):
        try:
            events.append((index, normalize(raw)))
        except InvalidEvent as exc:
            result.rejected.append((index, str(exc)))
    if not events:
        return result

    queue_ids = {e.queue_id for _, e in events}
    steps = {
        (s.queue.queue_id, s.telemetry_id): s
        for s in QueueRequest.objects.filter(queue__queue_id__in=queue_ids).select_related("queue")
    }
    queues = dict(Queue.objects.filter(queue_id__in=queue_ids).values_list("queue_id", "pk"))
    matched: list[tuple[Event, QueueRequest | None]] = []
    for index, event in events:
        if event.queue_id not in queues:
            result.rejected.append((index, f"unknown queue {event.queue_id!r}"))
            continue
        step = steps.get((event.queue_id, event.producer))
        if step is None and event.status != "pong":
            result.rejected.append((index, f"unknown producer {event.producer!r} in queue {event.queue_id!r}"))
            continue
        matched.append((event, step))

    with transaction.atomic():
        Queue.objects.lock_many({queues[event.queue_id] for event, _ in matched})
        new = _store_new(matched, queues, source)
        result.duplicates = len(matched) - len(new)
        result.accepted = len(new)
        _apply_progress(new)
        for event, step in new:
            if step is not None and _apply_state(step, event):
                result.changed_queues.add(step.queue_id)
        if new:
            telemetry_ingested.send(
                sender=TelemetryEvent,
                step_pks=sorted({step.pk for _, step in new if step is not None}),
                event_keys=[event.key for event, _ in new],
            )
        if result.changed_queues:
            _after_state_changes(result.changed_queues)
    return result


def _store_new(matched, queues: dict, source: str) -> list[tuple[Event, QueueRequest | None]]:
    keys = [event.key for event, _ in matched]
    seen = set(TelemetryEvent.objects.filter(event_key__in=keys).values_list("event_key", flat=True))
    new, rows = [], []
    for event, step in matched:
        if event.key in seen:
            continue
        seen.add(event.key)
        new.append((event, step))
        rows.append(
            TelemetryEvent(
                queue_id=queues[event.queue_id],
                step=step,
                event_key=event.key,
                status=event.status,
                producer=event.producer,
                records_written=event.records_written,
                message=event.message,
                payload=event.raw,
                source=source,
                sent_at=event.sent_at,
            )
        )
    TelemetryEvent.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return new


def _apply_progress(new) -> None:
    """One UPDATE for the batch: records_written only grows; last status, extra and times follow."""
    latest: dict[int, dict] = {}
    for event, step in new:
        if step is None:
            continue
        entry = latest.setdefault(step.pk, {"records": None, "status": "", "extra": None, "progress": False})
        if event.records_written is not None:
            entry["records"] = max(entry["records"] or 0, event.records_written)
            entry["progress"] = True
        entry["status"] = event.status
        if event.extra is not None:
            entry["extra"] = event.extra
    if not latest:
        return
    now = timezone.now()
    rows = [
        (pk, e["records"], e["status"], json.dumps(e["extra"]) if e["extra"] is not None else None, e["progress"])
        for pk, e in latest.items()
    ]
    table = QueueRequest._meta.db_table
    values = ", ".join(["(%s::bigint, %s::bigint, %s::text, %s::jsonb, %s::boolean)"] * len(rows))
    params = [value for row in rows for value in row]
    sql = (
        f"UPDATE {table} AS s SET "
        "records_written = GREATEST(s.records_written, COALESCE(v.records, 0)), "
        "reported_status = v.status, "
        "extra = COALESCE(v.extra, s.extra), "
        "last_event_at = %s, "
        "last_progress_at = CASE WHEN v.progress AND COALESCE(v.records, 0) > s.records_written "
        "THEN %s ELSE s.last_progress_at END, "
        "updated_at = %s "
        f"FROM (VALUES {values}) AS v(id, records, status, extra, progress) WHERE s.id = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, now, now, *params])
    for event, step in new:
        if step is not None and event.records_written is not None:
            step.records_written = max(step.records_written, event.records_written)


def _apply_state(step: QueueRequest, event: Event) -> bool:
    """Move the step as the event says; returns True if its state changed."""
    now = timezone.now()
    state = step.state
    if event.status in PROGRESS_STATUSES:
        if state in (StepState.LAUNCHING, StepState.PENDING):
            return step.transition(
                StepState.RUNNING, from_states=[StepState.LAUNCHING, StepState.PENDING],
                started_at=step.started_at or now, message="",
            )
        if state == StepState.STOPPING and step.started_at is None:
            QueueRequest.objects.filter(pk=step.pk, started_at__isnull=True).update(started_at=now)
            step.started_at = now
        return False
    if event.status not in ("finished", "error", "interrupted") or step.is_terminal or state == StepState.WAITING:
        return False
    to, message = _final_state(step, event)
    if to is None:
        return False
    return step.transition(to, from_states=StepState.LAUNCHED, message=message, started_at=step.started_at or now)


def _final_state(step: QueueRequest, event: Event) -> tuple[str | None, str]:
    if step.drain_requested_at:
        # A drained consumer's interrupted/finished is how a historical pipeline completes.
        return StepState.SUCCEEDED, f"Drained after {step.records_written} records."
    if event.status == "error":
        if step.stop_requested_at:
            return StepState.STOPPED, f"Stopped; the worker reported an error: {event.message}".strip()
        return StepState.FAILED, event.message or "The worker reported an error."
    if step.stop_requested_at:
        if event.status == "interrupted":
            return None, ""  # wait for its `finished` (or the grace period)
        return StepState.STOPPED, step.message or "Stopped."
    if event.status == "interrupted":
        return StepState.FAILED, "Interrupted without a stop request."
    return StepState.SUCCEEDED, event.message or ""


def _after_state_changes(queue_pks: set[int]) -> None:
    from jobs.tasks import queue_advance

    for pk in queue_pks:
        queue_advance.delay_on_commit(pk)
