"""Queue workflows shared by the API, the admin and the Kafka consumer.

Keyword-only functions named `<entity>_<action>`. They validate, write the database in one
transaction and announce execution to Celery on commit (jobs/announce.py); they never call the
cluster themselves.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs.announce import (
    QUEUE_ADVANCE,
    QUEUE_FORCE_STOP,
    QUEUE_SEND_STOP,
    STEP_DISCARD,
    STEP_FORCE_STOP,
    STEP_SEND_STOP,
    enqueue_on_commit,
)
from queues import naming
from queues.history import AuditAction, AuditResult, Origin, audit_record, step_run_record
from queues.models import Queue, QueueRequest, QueueStatus, StepState, steps_changed, update_with_records
from queues.signals import queue_status_changed

logger = logging.getLogger(__name__)


def queue_stop(*, queue: Queue, user=None, reason: str = "", origin: Origin | None = None) -> Queue:
    """Stop a queue (DESIGN §5 rule 6): cancel waiting steps, stop launched ones. Idempotent (audited)."""
    origin = origin or Origin(user=user)
    with transaction.atomic():
        queue = Queue.objects.lock(queue.pk)
        if queue.status in QueueStatus.TERMINAL or queue.stop_requested_at:
            audit_record(origin=origin, action=AuditAction.STOP, result=AuditResult.DUPLICATE, queue=queue,
                         reason="Already stopping." if queue.stop_requested_at and queue.is_active else f"Already {queue.status}.")
            return queue
        who = origin.who
        queue.stop_requested_at = timezone.now()
        queue.message = reason or f"Stop requested by {who}."
        # The steps' changes are counted once, with the stop itself (the row is locked: no one else counts
        # meanwhile), not by one UPDATE per step; an advance needs the count non-zero (step_transition).
        queue.changes_pending += 1
        queue.save(update_fields=["stop_requested_at", "message", "changes_pending", "updated_at"])
        if _steps_mark_stopping(queue=queue, now=queue.stop_requested_at):
            # One command task and one forced stop per queue, fanned out to its steps by the worker: the
            # request sends two tasks per queue, not two per step (issue #12, stop latency).
            enqueue_on_commit(QUEUE_SEND_STOP, queue.pk, about=queue)
            enqueue_on_commit(QUEUE_FORCE_STOP, queue.pk, about=queue,
                              eta=queue.stop_requested_at + timedelta(seconds=settings.STOP_GRACE_SECONDS))
        queue_refresh_status(queue=queue)
        audit_record(origin=origin, action=AuditAction.STOP, result=AuditResult.ACCEPTED, queue=queue, reason=reason)
    logger.info("queue stop requested", extra={"queue_id": queue.queue_id, "by": who})
    _advance_on_commit(queue)
    return queue


def _steps_mark_stopping(*, queue: Queue, now) -> int:
    """`step_mark_stopping` for every unfinished step of a locked queue, in two UPDATEs whatever the
    number of steps (waiting ones cancelled, launched ones `stopping`); returns how many are now
    stopping. The tasks are the caller's (one per queue). The steps are locked first (queue, then its
    steps: the one lock order), so each UPDATE changes exactly the rows read and every step still
    gets its `step_state_changed` (metrics) as with one transition each, its `step_state_writing`
    records (the mirror's outbox row) written by the UPDATE itself.

    A `launching` step no attempt was claimed for (`launch_attempts` 0: no API call made, so no
    workload can exist) is cancelled like a waiting one — a queue stopped right after its submission
    ends at once. Its row stays locked until the commit, so a launch task's claim (an UPDATE of that
    row requiring `launching`) waits for it and then claims nothing."""
    steps = list(queue.steps.select_for_update().exclude(state__in=StepState.TERMINAL))
    waiting = [step for step in steps if step.state == StepState.WAITING
               or (step.state == StepState.LAUNCHING and step.launch_attempts == 0)]
    launched = [step for step in steps if step.state in StepState.LAUNCHED and step.state != StepState.STOPPING
                and step not in waiting]
    common = {"state_changed_at": now, "updated_at": now, "stop_requested_at": now}
    for group, to, fields in (
        (waiting, StepState.STOPPED, {"message": f"Cancelled: {queue.message}", "finished_at": now, "next_launch_at": None}),
        (launched, StepState.STOPPING, {"message": queue.message}),
    ):
        if not group:
            continue
        values = {"state": to, **common, **fields}
        # What receivers record (the mirror's outbox rows) comes with the UPDATE: one statement per group.
        changed = update_with_records(group, to, {"pk__in": [step.pk for step in group]}, values)
        steps_changed(group, changed, to, values)  # every one: the rows are locked
    return len(launched)


def step_stop(*, step: QueueRequest, user=None, reason: str = "", origin: Origin | None = None) -> QueueRequest:
    """Stop one step (graceful, then forced after the grace period). Idempotent (audited)."""
    origin = origin or Origin(user=user)
    who = origin.who
    with transaction.atomic():
        Queue.objects.lock(step.queue_id)  # queue first, then its steps: the one lock order
        step = QueueRequest.objects.select_related("queue").get(pk=step.pk)
        if not step.is_terminal and not step.stop_requested_at:
            step_mark_stopping(step=step, reason=reason or f"Stop requested by {who}.")
            queue_refresh_status(queue=step.queue)
            audit_record(origin=origin, action=AuditAction.STEP_STOP, result=AuditResult.ACCEPTED, queue=step.queue,
                         step_name=step.name, reason=reason)
        else:
            audit_record(origin=origin, action=AuditAction.STEP_STOP, result=AuditResult.DUPLICATE, queue=step.queue,
                         step_name=step.name, reason=f"Already {step.state}.")
    _advance_on_commit(step.queue)
    return step


def step_mark_stopping(*, step: QueueRequest, reason: str, drain: bool = False, mark_queue: bool = True) -> None:
    """The state half of `step_stop`, for a caller that holds the queue's lock: cancel a waiting
    step, or move a launched one to `stopping` and announce `step_send_stop` (the command).

    `drain` marks a consumer stopped because its producers are done: its end counts as success.
    """
    now = timezone.now()
    if step.state == StepState.WAITING:
        step_transition(step, StepState.STOPPED, from_states=[StepState.WAITING], message=f"Cancelled: {reason}",
                        stop_requested_at=now, mark_queue=mark_queue)
        return
    if step.state in StepState.LAUNCHED and step.state != StepState.STOPPING:
        extra = {"drain_requested_at": now} if drain else {}
        step_transition(step, StepState.STOPPING, from_states=StepState.LAUNCHED, message=reason, stop_requested_at=now,
                        mark_queue=mark_queue, **extra)
        enqueue_on_commit(STEP_SEND_STOP, step.pk, about=step)
        # The forced end is due when the grace period ends, not on the first reconcile pass after it
        # (up to a beat interval later); reconcile still forces it if this task is lost.
        enqueue_on_commit(STEP_FORCE_STOP, step.pk, eta=now + timedelta(seconds=settings.STOP_GRACE_SECONDS),
                          about=step)


def step_transition(step: QueueRequest, to: str, *, mark_queue: bool = True, **kwargs) -> bool:
    """`QueueRequest.transition` plus what the orchestration owes a step that changed or ended.

    A step that ends failed, stopped or lost from a launched state gets its workload deleted once
    this commits (scheduler.step_discard), whoever ended it (telemetry, reconcile, a launch): a
    failed Job would be rerun and a streaming one would run forever. Every orchestration caller
    changes state through here; the domain model knows nothing of workloads.

    The queue's `changes_pending` counts the change in the same transaction, so a reconcile pass
    advances this queue even if the advance announced for it is lost. It is taken first (queue,
    then its steps: the one lock order) and may count an attempt that changes nothing, which only
    costs one idle advance. `mark_queue=False` is for a change no advance needs to act on
    (launching → pending) and for queue_advance's own changes.
    """
    previous = step.state
    if mark_queue:
        with transaction.atomic(savepoint=False):  # joins the caller's transaction when there is one
            Queue.objects.filter(pk=step.queue_id).update(changes_pending=F("changes_pending") + 1)
            changed = step.transition(to, **kwargs)
    else:
        # Alone, outside a transaction, the transition is one statement (QueueRequest.transition).
        changed = step.transition(to, **kwargs)
    if changed and to in StepState.DISCARD_WORKLOAD and previous in StepState.LAUNCHED:
        enqueue_on_commit(STEP_DISCARD, step.pk, step.job_name, about=step)
    return changed


def queue_retry(*, queue: Queue, user=None, origin: Origin | None = None) -> int:
    """Put failed, stopped and lost steps back to waiting and run the queue again; returns how many.

    Each retried step's ended run is kept first (queues.history.StepRun); the request is audited.
    """
    origin = origin or Origin(user=user)
    with transaction.atomic():
        queue = Queue.objects.lock(queue.pk)
        if queue.status not in QueueStatus.TERMINAL and not queue.steps.filter(state__in=StepState.RETRYABLE).exists():
            audit_record(origin=origin, action=AuditAction.RETRY, result=AuditResult.REJECTED, queue=queue,
                         reason="Nothing to retry: no failed, stopped or lost steps.")
            return 0
        count = 0
        retried = []
        for step in queue.steps.filter(state__in=StepState.RETRYABLE):
            run = step.run + 1
            step_run_record(step=step)  # under the queue's lock: the run cannot end differently meanwhile
            retried.append(step.name)
            count += step_transition(
                step,
                StepState.WAITING,
                from_states=StepState.RETRYABLE,
                message=f"Retry requested by {origin.who}.",
                stop_requested_at=None,
                drain_requested_at=None,
                finished_at=None,
                launched_at=None,
                started_at=None,
                launch_attempts=0,
                launcher_handle={},
                reported_status="",
                records_written=0,
                logs="",  # the ended run's log tail and extra stay with its StepRun
                extra={},
                run=run,
                job_name=naming.job_name(queue.queue_id, step.target, step.number, run),
            )
        if count:
            queue.stop_requested_at = None
            queue.finished_at = None
            queue.message = ""
            queue.save(update_fields=["stop_requested_at", "finished_at", "message", "updated_at"])
            queue_refresh_status(queue=queue)
        audit_record(origin=origin, action=AuditAction.RETRY, result=AuditResult.ACCEPTED if count else AuditResult.REJECTED,
                     queue=queue, reason="" if count else "Nothing to retry: no failed, stopped or lost steps.",
                     detail={"steps": retried} if count else {})
    if count:
        _advance_on_commit(queue)
    return count


def queue_refresh_status(*, queue: Queue, held_states: list[str] | None = None, changes_seen: int = 0) -> str:
    """Recompute and store the queue's status from its steps (the only writer of Queue.status).

    Always under the queue's lock and from the locked row, never from a stale copy: two writers
    deciding from stale copies could make the status flap or count a finish twice. `held_states`:
    the caller's `queue` is the row it locked in this transaction and these are the states of all
    its steps read under that lock, with the caller's own changes — neither is read again.
    `changes_seen`: change counts the caller acted on, taken off `changes_pending` in the same UPDATE.
    """
    # No savepoint: every caller holds the queue's lock in its own transaction and none goes on after an
    # error here (a savepoint is two more round trips, on the way from create to the first Jobs too).
    with transaction.atomic(savepoint=False):
        if held_states is None:
            locked = Queue.objects.lock(queue.pk)  # re-taking it in the same transaction costs one round trip
            # No ordering: the status rule needs the states only (the default one joins the queue to sort).
            states = list(locked.steps.order_by().values_list("state", flat=True))
        else:
            locked, states = queue, held_states
        previous = {key: getattr(locked, key) for key in ("status", "started_at", "finished_at",
                                                          "stop_requested_at", "message")}
        status = locked.derive_status(states)
        now = timezone.now()
        fields: dict = {"status": status}
        if status != QueueStatus.PENDING and previous["started_at"] is None:
            fields["started_at"] = now
        if status in QueueStatus.TERMINAL:
            fields["finished_at"] = previous["finished_at"] or now
        else:
            fields["finished_at"] = None
        changed = any(previous[k] != v for k, v in fields.items())
        writes = {"updated_at": now, **fields} if changed else {}
        if changes_seen:
            writes["changes_pending"] = F("changes_pending") - changes_seen
        if writes:
            Queue.objects.filter(pk=queue.pk).update(**writes)
        for key in previous:
            setattr(queue, key, fields.get(key, previous[key]))
        if changed and previous["status"] != status:
            queue_status_changed.send(sender=Queue, queue=queue, previous=previous["status"], status=status)
    return status


def _advance_on_commit(queue: Queue) -> None:
    enqueue_on_commit(QUEUE_ADVANCE, queue.pk, about=queue)
