"""Telemetry ingestion (DESIGN §6): worker events → step state and progress.

One entry point, `ingest_events()`, used by the HTTP endpoint and the Kafka consumer alike. A
batch is written in one transaction: plain progress reports are coalesced per step per batch into
one event (jobs.telemetry_coalesce), events are stored (deduplicated by a content hash:
jobs.telemetry_store), progress is applied with one UPDATE for the whole batch, state changes go
through compare-and-set transitions. Applying the same event twice changes nothing (records_written
only grows, a transition that already happened does not happen again), so at-least-once delivery
is safe.

Runs: a retried step keeps its telemetry_id, so an event belongs to the run it names (`run`, sent
by workers from STEP_RUN) or, without one, to the step's run current when it arrives. The run is
part of the dedupe key (the same body counts once per run); an event of an earlier run is stored
for the history but changes nothing; one of a later run than the step's is refused.
Validation (one bad event is refused alone, naming the field) lives in jobs.telemetry_input.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from jobs.announce import QUEUE_ADVANCE, enqueue_on_commit
from jobs.services import step_transition
from jobs.signals import telemetry_counted
from jobs.telemetry_coalesce import split as coalesce_split
from jobs.telemetry_input import STATUSES, Event, InvalidEvent, canonical, event_key, normalize  # noqa: F401 (API)
from jobs.telemetry_store import store_events
from queues.models import Queue, QueueRequest, StepState, TelemetryEvent
from queues.signals import telemetry_ingested

PROGRESS_STATUSES = ("started", "loading", "progress")
INTERRUPTED_MESSAGE = "The worker reported `interrupted` without a stop request from the manager."


# What ingestion reads of a step; the rest loads lazily only when a state actually changes.
_STEP_FIELDS = (
    "id", "queue_id", "telemetry_id", "state", "reported_status", "records_written", "message", "started_at",
    "stop_requested_at", "drain_requested_at", "run",
)


class _Step:
    """A step as ingestion reads it: a row, not a model instance (building one per step of every batch
    cost more than the batch's progress UPDATE). The model is built only for a state change."""

    __slots__ = ("values", "id", "queue_id", "state", "reported_status", "records_written", "run", "instance")

    def __init__(self, values: tuple):
        self.values = values
        self.id, self.queue_id, _, self.state, self.reported_status, self.records_written = values[:6]
        self.run = values[10]
        self.instance = None

    def model(self) -> QueueRequest:
        """The step as a model instance, with what this batch changed so far."""
        step = self.instance
        if step is None:
            # from_db takes the values in the model's field order
            named = dict(zip(_STEP_FIELDS, self.values))
            names = [f.attname for f in QueueRequest._meta.concrete_fields if f.attname in named]
            step = self.instance = QueueRequest.from_db(connection.alias, names, [named[n] for n in names])
        step.reported_status, step.records_written = self.reported_status, self.records_written
        return step

    def changed(self) -> None:
        """Take back what a state change did to the model."""
        step = self.instance
        self.state, self.reported_status, self.records_written = step.state, step.reported_status, step.records_written


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)
    changed_queues: set[int] = field(default_factory=set)


@dataclass
class PreparedEvents:
    """A batch validated and grouped, not yet applied (ingest_prepare → ingest_apply)."""

    events: list[Event]
    reordered: bool  # some events were validated one by one: rejections and order need sorting
    result: IngestResult


def ingest_events(raw_events: list, *, source: str = "http", texts: list[str] | None = None) -> IngestResult:
    """Validate, match, store and apply a batch of events; see the module docstring.

    `texts`, when given, are the events' JSON texts as received (same order as `raw_events`).
    """
    return ingest_apply(ingest_prepare(raw_events, texts), source=source)


def ingest_prepare(raw_events: list, texts: list[str] | None = None) -> PreparedEvents:
    """The database-free part of ingest_events (validation, coalescing): the Kafka consumer runs it
    for the next batch while the previous one is applied. Apply a PreparedEvents at most once."""
    result = IngestResult()
    events, rest = coalesce_split(raw_events, texts)  # plain progress reports: one event per step per batch
    rejected = result.rejected
    for index in rest:
        try:
            event = normalize(raw_events[index], None if texts is None else texts[index])
        except InvalidEvent as exc:
            rejected.append((index, str(exc)))
            continue
        event.index = index
        events.append(event)
    reordered = len(rest) != len(raw_events)
    if reordered:
        events.sort(key=_position)  # applied in batch order, a coalesced event where its last report was
    return PreparedEvents(events, reordered, result)


def ingest_apply(prepared: PreparedEvents, *, source: str = "http") -> IngestResult:
    """The database part of ingest_events: one transaction, committed when this returns."""
    events, result = prepared.events, prepared.result
    if not events:
        return result
    with transaction.atomic():
        # Lock first, then read the steps: what we decide from their state cannot be stale.
        queues = _lock_queues({e.queue_id for e in events})
        matched = _match(events, queues, result)
        new, refused = store_events(matched, queues, source)
        for event, reason in refused:
            _reject(result.rejected, event, reason)
        result.accepted = sum(event.coalesced for event, _ in new)
        # What is neither stored nor refused was stored before (a redelivery, a replay).
        result.duplicates = (sum(_reports(event) for event, _ in matched) - result.accepted
                             - sum(_reports(event) for event, _ in refused))
        current = [(event, step) for event, step in new if step is not None and not event.stale]
        _apply_progress(current)
        running = StepState.RUNNING
        for event, step in current:
            if step.state == running and event.status in PROGRESS_STATUSES:
                step.reported_status = event.status  # the common case: progress of a running step
            else:
                changed = _apply_state(step.model(), event)
                step.changed()
                if changed:
                    result.changed_queues.add(step.queue_id)
        _count(new)
        if new:
            telemetry_ingested.send(
                sender=TelemetryEvent,
                step_pks=sorted({step.id for _, step in new if step is not None}),
                event_keys=[event.key for event, _ in new],
            )
        if result.changed_queues:
            _after_state_changes(result.changed_queues, queues)
    if prepared.reordered:
        result.rejected.sort()
    return result


def _position(event: Event) -> int:
    return event.index


def _reports(event: Event) -> int:
    """How many events of the batch it is (a coalesced one: its reports, repeated ones included)."""
    return 1 if event.indexes is None else len(event.indexes)


def _reject(rejected: list, event: Event, reason: str) -> None:
    """Refuse an event: each report of a coalesced one, by its own position in the batch."""
    if event.indexes is None:
        rejected.append((event.index, reason))
    else:
        rejected.extend((index, reason) for index in event.indexes)


def _lock_queues(queue_ids: set[str]) -> dict[str, int]:
    """{queue_id: pk} of the batch's queues that exist, each locked for changes to it or its steps
    (FOR NO KEY UPDATE, as Queue.objects.lock takes one; in pk order, so writers of several queues
    never deadlock). One plain query: the ORM's look-up and lock cost ~1 µs per report (issue #12)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT queue_id, id FROM {Queue._meta.db_table} WHERE queue_id = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
            [list(queue_ids)],
        )
        return dict(cursor.fetchall())


def _match(events, queues: dict, result: IngestResult) -> list[tuple[Event, _Step | None]]:
    """Pair each event with its step by (queue_id, producer) and its run; the rest is rejected with a reason."""
    queue_id_of = {pk: queue_id for queue_id, pk in queues.items()}
    with connection.cursor() as cursor:
        # The steps as rows; a plain query (the ORM's values_list cost three times as much). The pks
        # as one comma-separated text, split by the server (no per-element quoting by the driver).
        cursor.execute(
            f"SELECT {', '.join(_STEP_FIELDS)} FROM {QueueRequest._meta.db_table} "
            "WHERE queue_id = ANY(string_to_array(%s, ',')::bigint[])",
            [",".join([str(pk) for pk in queue_id_of])],
        )
        steps = {(queue_id_of[values[1]], values[2]): _Step(values) for values in cursor.fetchall()}
    matched = []
    rejected = result.rejected
    for event in events:
        step = steps.get((event.queue_id, event.producer))
        if step is not None:
            run = event.run
            if run is None:
                event.run = run = step.run  # workers that do not send their run: the run current now
            elif run > step.run:
                _reject(rejected, event, f"invalid run: {run} has not started (step is in run {step.run})")
                continue
            event.stale = run < step.run
        elif event.queue_id not in queues:
            _reject(rejected, event, f"unknown queue {event.queue_id!r}")
            continue
        elif event.status != "pong":
            _reject(rejected, event, f"unknown producer {event.producer!r} in queue {event.queue_id!r}")
            continue
        event.key = event_key(event.text if event.hashed is None else event.hashed, event.run)
        matched.append((event, step))
    return matched


def _apply_progress(new) -> None:
    """One UPDATE for the batch: records_written only grows; last status, extra and times follow."""
    latest: dict[int, list] = {}  # step id -> [max records, last status, last extra, any progress, step]
    for event, step in new:
        if step is None:
            continue
        entry = latest.get(step.id)
        if entry is None:
            entry = latest[step.id] = [None, "", None, False, step]
        records = event.records_written
        if records is not None:
            if entry[0] is None or records > entry[0]:
                entry[0] = records
            entry[3] = True
        entry[1] = event.status
        if event.extra is not None:
            entry[2] = event.extra
    if not latest:
        return
    now = timezone.now()
    pks = list(latest)
    entries = list(latest.values())
    extras = [json.dumps(entry[2]) if entry[2] is not None else None for entry in entries]
    # Numbers, statuses (STATUSES: no commas) and flags as one comma-separated text each, split by
    # the server: the driver would dump a list element by element. Extras (any JSON) stay an array,
    # NULL when no step got one (unnest pads the missing values with NULL).
    columns = [
        ",".join([str(pk) for pk in pks]),
        ",".join(["" if entry[0] is None else str(entry[0]) for entry in entries]),
        ",".join([entry[1] for entry in entries]),
        extras if any(extra is not None for extra in extras) else None,
        ",".join(["t" if entry[3] else "f" for entry in entries]),
    ]
    table = QueueRequest._meta.db_table
    # Arrays + unnest: five parameters whatever the batch size (a VALUES list costs a placeholder each).
    sql = (
        f"UPDATE {table} AS s SET "
        "records_written = GREATEST(s.records_written, COALESCE(v.records, 0)), "
        "reported_status = v.status, "
        "extra = COALESCE(v.extra, s.extra), "
        "last_event_at = %s, "
        "last_progress_at = CASE WHEN v.progress AND COALESCE(v.records, 0) > s.records_written "
        "THEN %s ELSE s.last_progress_at END, "
        "updated_at = %s "
        "FROM unnest(string_to_array(%s, ',')::bigint[], string_to_array(%s, ',', '')::bigint[], "
        "string_to_array(%s, ',')::text[], %s::jsonb[], string_to_array(%s, ',')::boolean[]) "
        "AS v(id, records, status, extra, progress) WHERE s.id = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, now, now, *columns])
    for entry in entries:  # what the UPDATE did, on the objects the state changes read next
        if entry[0] is not None and entry[0] > entry[4].records_written:
            entry[4].records_written = entry[0]


def _apply_state(step: QueueRequest, event: Event) -> bool:
    """Move the step as the event says; returns True if its state changed."""
    now = timezone.now()
    state = step.state
    if event.status in PROGRESS_STATUSES:
        step.reported_status = event.status  # e.g. a pod run again after an eviction reports `started`
        if state in (StepState.LAUNCHING, StepState.PENDING):
            return step_transition(
                step, StepState.RUNNING, from_states=[StepState.LAUNCHING, StepState.PENDING],
                started_at=step.started_at or now, message="",
            )
        if state == StepState.STOPPING and step.started_at is None:
            QueueRequest.objects.filter(pk=step.pk, started_at__isnull=True).update(started_at=now)
            step.started_at = now
        return False
    if event.status not in ("finished", "error", "interrupted") or step.is_terminal or state == StepState.WAITING:
        return False
    if event.status == "interrupted" and not (step.stop_requested_at or step.drain_requested_at):
        # Not ours: a stop sent to the workers by someone else (ours may not be recorded yet), or a pod
        # being evicted that Kubernetes will run again. Note it; what follows decides.
        step.reported_status = "interrupted"
        QueueRequest.objects.filter(pk=step.pk).update(message=INTERRUPTED_MESSAGE)
        return False
    to, message = _final_state(step, event)
    if to is None:
        return False
    return step_transition(step, to, from_states=StepState.LAUNCHED, message=message, started_at=step.started_at or now)


def _final_state(step: QueueRequest, event: Event) -> tuple[str | None, str]:
    """Where `finished`, `error` or an expected `interrupted` takes the step (None: not yet)."""
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
    if step.reported_status == "interrupted":
        return StepState.STOPPED, "Stopped by the worker after an interruption the manager did not request."
    return StepState.SUCCEEDED, event.message or ""


def _count(new) -> None:
    """Telemetry counters by status and target, once per batch (whatever the source)."""
    by_producer: Counter = Counter()
    for event, _ in new:  # every report, a coalesced event for as many as it stands for
        by_producer[(event.status, event.producer)] += event.coalesced
    groups: Counter = Counter()
    for (status, producer), amount in by_producer.items():  # the target once per producer, not per event
        groups[(status, producer.split("__", 1)[0])] += amount
    for (status, target), amount in groups.items():
        telemetry_counted.send(sender=ingest_events, status=status, target=target, count=amount)


def _after_state_changes(queue_pks: set[int], queues: dict[str, int]) -> None:
    # The queue ids are at hand: Flower's readable arguments need no query per announced advance.
    queue_id_of = {pk: queue_id for queue_id, pk in queues.items()}
    for pk in queue_pks:
        enqueue_on_commit(QUEUE_ADVANCE, pk, about=Queue(pk=pk, queue_id=queue_id_of[pk]))
