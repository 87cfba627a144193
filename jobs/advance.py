"""Advancing one queue (DESIGN §5): which waiting steps launch now, failure policy, drain.

Level-triggered: `queue_advance` looks at the whole queue under its lock and does what its state
calls for, so running it twice, late, or after lost events is harmless. The scheduler's reconcile
and the `queue_advance_task` call it, and a queue's submission takes its first advance with
`advance_held` (jobs.submission); launching itself is `jobs.launching` (`steps_launch`, `step_launch`).
"""
from __future__ import annotations

from datetime import timedelta
from functools import lru_cache

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs.announce import STEP_LAUNCH, STEPS_LAUNCH, enqueue_on_commit
from jobs.services import queue_refresh_status, step_mark_stopping, step_transition
from queues.catalogue import TARGETS
from queues.models import (
    DependencyKind,
    Queue,
    QueueRequest,
    StepDependency,
    StepState,
    execute_with_records,
    steps_changed,
)


def queue_advance(queue_pk: int) -> list[int]:
    """Apply DESIGN §5 to one queue; returns the pks of steps to launch (enqueued on commit)."""
    with transaction.atomic():
        queue = Queue.objects.lock(queue_pk, missing_ok=True)
        if queue is None:
            return []
        steps, upstreams = _steps_and_upstreams(queue)
        return advance_held(queue, steps, upstreams)


def advance_held(queue: Queue, steps: dict, upstreams: dict[int, list]) -> list[int]:
    """`queue_advance` for a caller that holds the queue's row locked in its transaction and every step
    of it as of that lock: `steps` by pk in position order (each with `queue` set to that row),
    `upstreams` each step's upstream edges as (upstream step, kind) in upstream position order. The
    queue's creation is such a caller: it holds the steps it has just inserted (jobs.submission)."""
    to_launch: list[int] = []
    # What this advance acts on. Changes counted after this (they wait for our lock) stay
    # counted for the next advance; our own changes are not counted (we decide from them here).
    seen_changes = queue.changes_pending
    failed = [s for s in steps.values() if s.state in StepState.FAILED_STATES]
    if failed and settings.FAILURE_POLICY == "stop_queue":
        reason = f"Step {failed[0].name} {failed[0].state}: {failed[0].message}".strip().rstrip(":")
        if not queue.message:
            Queue.objects.filter(pk=queue.pk).update(message=reason)
            queue.message = reason  # the copy stays the locked row (queue_refresh_status reads it)
        for step in steps.values():
            if not step.is_terminal and not step.stop_requested_at:
                step_mark_stopping(step=step, reason=f"Queue failed: {reason}", mark_queue=False)
    elif not queue.stop_requested_at:
        _cancel_unreachable(steps.values(), upstreams)
        to_launch = _steps_mark_launching(
            [s for s in steps.values() if s.state == StepState.WAITING and _dependencies_met(upstreams[s.pk])])
        _drain_consumers(steps.values())
    # The row locked above and every step read under that lock, with this advance's own changes
    # (a transition sets them on the step): no second lock, no second read of the states. Only
    # launching → pending happens without this lock, and the status rule reads both alike.
    queue_refresh_status(queue=queue, held_states=[s.state for s in steps.values()], changes_seen=seen_changes)

    if len(to_launch) > 1:
        # Steps ready together launch together: one task claims and records them in one statement
        # each and makes their API calls at once (jobs.launching); retries stay per step.
        enqueue_on_commit(STEPS_LAUNCH, queue.pk, to_launch, about=queue)
    elif to_launch:
        # The step is in hand (its queue too, through the related manager): Flower's readable
        # arguments cost no query.
        enqueue_on_commit(STEP_LAUNCH, to_launch[0], about=steps[to_launch[0]])
    return to_launch


def _steps_and_upstreams(queue: Queue) -> tuple[dict, dict[int, list]]:
    """The queue's steps by pk (in position order, each with `queue` set to the caller's row), and each
    step's upstream edges as (upstream step, kind) in upstream position order — one query: each step
    carries its edges' two columns as arrays (the edges read apart were one more round trip per
    advance). Plain SQL built once per process: the ORM's compiling and building of the same query
    cost ~5x its round trip (issue #12, create → ready)."""
    fields, sql = _steps_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [queue.pk])
        rows = cursor.fetchall()
    attnames, width = [f.attname for f in fields], len(fields)
    steps, edges = {}, {}
    for row in rows:
        step = QueueRequest.from_db(connection.alias, attnames,
                                    [field_from_db(f, value) for f, value in zip(fields, row[:width])])
        step.queue = queue  # what the related manager would set: the row this advance locked
        steps[step.pk] = step
        edges[step.pk] = zip(row[width] or [], row[width + 1] or [])
    upstreams = {pk: [(steps[up], kind) for up, kind in pairs] for pk, pairs in edges.items()}
    return steps, upstreams


# What an advance never reads of a step: its log tail and its JSON documents (decoding them was a third
# of the read). Deferred as the ORM's `defer()` would: read on first access, should anything need them.
_ADVANCE_SKIP = {"logs", "params", "extra", "launcher_handle", "collection_inputs"}


@lru_cache(maxsize=1)
def _steps_sql() -> tuple[list, str]:
    fields = [f for f in QueueRequest._meta.concrete_fields if f.name not in _ADVANCE_SKIP]
    steps, edges = QueueRequest._meta.db_table, StepDependency._meta.db_table
    ordered = (f"FROM {edges} AS d JOIN {steps} AS u ON u.id = d.upstream_id WHERE d.downstream_id = s.id "
               "ORDER BY u.position, d.upstream_id")
    return fields, (
        f"SELECT {', '.join(f's.{f.column}' for f in fields)}, "
        f"ARRAY(SELECT d.upstream_id {ordered}), ARRAY(SELECT d.kind {ordered}) "
        f"FROM {steps} AS s WHERE s.queue_id = %s ORDER BY s.position"
    )


def field_from_db(field, value):
    """A raw cursor's value as the ORM gives it: jsonb comes as text, which the field decodes."""
    return field.from_db_value(value, None, connection) if isinstance(value, str) and hasattr(field, "from_db_value") else value


def _steps_mark_launching(ready: list[QueueRequest]) -> list[int]:
    """waiting → launching for the steps ready now, in ONE statement whatever their number (was one
    transition each), compare-and-set per step as `step_transition` does it, with what the
    `step_state_writing` receivers record for each changed step (the mirror's outbox row) written by
    the same statement; each changed step then reaches every `step_state_changed` receiver once, as
    after its own transition. Under the queue's lock (taken by the caller), like every change of a
    waiting step. Returns the pks changed, in order."""
    if not ready:
        return []
    now = timezone.now()
    values = {"state": StepState.LAUNCHING, "state_changed_at": now, "updated_at": now, "message": ""}
    changed = execute_with_records(
        f"UPDATE {QueueRequest._meta.db_table} SET state = %s, state_changed_at = %s, updated_at = %s, message = %s "
        "WHERE id = ANY(%s) AND state = %s RETURNING id",
        [*values.values(), [s.pk for s in ready], StepState.WAITING], ready, StepState.LAUNCHING)
    steps_changed(ready, changed, StepState.LAUNCHING, values)
    return [step.pk for step in ready if step.pk in changed]


def _dependencies_met(upstream_edges) -> bool:
    for upstream, kind in upstream_edges:
        if kind == DependencyKind.SUCCESS and upstream.state != StepState.SUCCEEDED:
            return False
        if kind == DependencyKind.READY and not upstream.is_ready:
            return False
    return True


def _cancel_unreachable(steps, upstreams) -> None:
    """A waiting step whose upstream ended without success can never start: cancel it, and what
    waits for it in turn (repeated until nothing changes: steps need not be in dependency order)."""
    cancelled = True
    while cancelled:
        cancelled = False
        for step in steps:
            if step.state != StepState.WAITING:
                continue
            for upstream, _kind in upstreams[step.pk]:
                if upstream.is_terminal and upstream.state != StepState.SUCCEEDED:
                    cancelled |= step_transition(
                        step, StepState.STOPPED, from_states=[StepState.WAITING],
                        message=f"Cancelled: upstream {upstream.name} ended {upstream.state}.", mark_queue=False,
                    )
                    break


def _drain_consumers(steps) -> None:
    """DESIGN §5 rule 4: stop a consumer once all its producers succeeded and it caught up or idled."""
    steps = list(steps)
    now = timezone.now()
    idle = timedelta(seconds=settings.DRAIN_IDLE_SECONDS)
    for consumer in steps:
        if TARGETS[consumer.target].topic_role != "consumer" or consumer.state != StepState.RUNNING:
            continue
        producers = [
            s for s in steps if s.kafka_topic == consumer.kafka_topic and TARGETS[s.target].topic_role == "producer"
        ]
        if not producers or any(p.state != StepState.SUCCEEDED for p in producers):
            continue
        total = sum(p.records_written for p in producers)
        producers_done = max(p.finished_at or now for p in producers)
        last_activity = max(filter(None, [consumer.last_progress_at, consumer.started_at, producers_done]))
        if consumer.records_written >= total:
            reason = f"Drained: wrote {consumer.records_written} of {total} records."
        elif now - last_activity >= idle:
            reason = f"Drained after {settings.DRAIN_IDLE_SECONDS:g}s idle: wrote {consumer.records_written} of {total} records."
        else:
            continue
        step_mark_stopping(step=consumer, reason=reason, drain=True, mark_queue=False)
