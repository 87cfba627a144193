"""Launching steps: one step (`step_launch`), and a queue's ready steps together (issue #12, launch figures).

Every attempt is claimed first (`claim_attempts`: one atomic UPDATE … RETURNING counts it against
the step's budget and sets its deadline, `scheduler.attempt_deadline`, after which reconcile may send
the launch again), then the launcher creates the workload, then the launch is recorded (launching →
pending and the handle) — or recorded late, or its workload removed, when the step moved on meanwhile.
The launcher is the scheduler's (`scheduler.get_launcher`): the one that removes a late launch's
workload and that reconcile observes.

When an advance finds several steps ready at once (a queue's connectors, the example's two
producers), it sends ONE `steps_launch` task for them instead of one `step_launch` per step. The
task does what that many `step_launch` calls would, with fewer round trips:

- the claims in ONE statement (`claim_attempts`: each step claimed or not exactly as
  alone — the same atomic UPDATE … RETURNING, so two workers never both launch a step unnoticed:
  the second meets the Job's 409 and adopts it, as two `step_launch` tasks do);
- the launcher's calls for the claimed steps concurrently (`launch_many`: the Kubernetes launcher
  POSTs each Job and its Secret on threads of its own; every other launcher one after the other);
- the records (launching → pending, the handle) in ONE statement, with what `step_state_writing`
  receivers record (the mirror's outbox row) for each changed step — both or neither;
- per step, every other outcome exactly as `step_launch` has it: a step no longer launching is
  skipped, one out of attempts fails, a failed attempt spends its budget and is retried by the
  per-step `step_launch` task after its backoff (or fails the step for good), a launch that returns
  after the step moved on records late or removes what it created.

Nothing is lost if the task itself is: every claimed step carries its attempt's deadline
(`next_launch_at`), after which reconcile sends its own `step_launch` (the per-step task stays).
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import scheduler
from jobs.advance import field_from_db
from jobs.announce import QUEUE_ADVANCE, STEP_LAUNCH, STEP_SEND_STOP, enqueue, enqueue_on_commit
from jobs.launchers import LaunchError
from jobs.services import step_transition
from queues.models import Queue, QueueRequest, StepState, execute_with_records, steps_changed

logger = logging.getLogger(__name__)


class RetryLaunch(Exception):
    """A launch attempt failed and the step's budget allows another one after `countdown` seconds."""

    def __init__(self, countdown: float, reason: str):
        super().__init__(reason)
        self.countdown = countdown


def step_launch(step_pk: int) -> str:
    """Launch one step (idempotent): 'launched', 'skipped' (not launching any more) or 'failed'.

    Every attempt is counted in the database before it starts (`launch_attempts`, a bounded budget
    per run); any exception from it raises RetryLaunch while the budget lasts, else fails the step
    with the reason. A launch that returns after the step stopped, failed or moved to another run
    removes what it just created.
    """
    step = _claim_attempt(step_pk)
    if step is None:
        return step_launch_unclaimed(step_pk)
    try:
        handle = scheduler.get_launcher().launch(step)
        return _record_launch(step, handle)
    except Exception as exc:  # timeouts, SoftTimeLimitExceeded, client errors: all spend the budget
        countdown = step_launch_attempt_failed(step, exc)
        if countdown is None:
            return "failed"
        raise RetryLaunch(countdown, str(exc)) from exc


def step_launch_unclaimed(step_pk: int) -> str:
    """A launch whose claim found nothing to do: 'skipped' (not launching any more) or 'failed' (its
    run's attempts are spent)."""
    step = QueueRequest.objects.select_related("queue").filter(pk=step_pk).first()
    if step is None or step.state != StepState.LAUNCHING:
        return "skipped"
    _fail_launch(step, f"gave up after {step.launch_attempts} attempts: {step.message or 'no reason recorded'}")
    return "failed"


# What a launch reads of a step and its queue: everything but the step's log tail and the queue's
# payloads (the manifest needs none of them).
_CLAIM_STEP_SKIP = {"logs"}
_CLAIM_QUEUE_SKIP = {"payload", "canonical_payload", "warnings"}


def _claim_attempt(step_pk: int) -> QueueRequest | None:
    """Count one attempt if the step is launching and its run's budget allows it, and return the
    step with its queue — one UPDATE … RETURNING, no read-then-write; None when not claimed."""
    return claim_attempts([step_pk]).get(step_pk)


def claim_attempts(step_pks: list[int]) -> dict[int, QueueRequest]:
    """`_claim_attempt` for several steps in ONE statement (a queue's ready steps launched together):
    each step is claimed or not exactly as alone; returns the claimed ones by pk, with their queue."""
    step_fields = [f for f in QueueRequest._meta.concrete_fields if f.name not in _CLAIM_STEP_SKIP]
    queue_fields = [f for f in Queue._meta.concrete_fields if f.name not in _CLAIM_QUEUE_SKIP]
    columns = [f"s.{f.column}" for f in step_fields] + [f"q.{f.column}" for f in queue_fields]
    sql = (
        f"UPDATE {QueueRequest._meta.db_table} AS s "
        "SET launch_attempts = s.launch_attempts + 1, next_launch_at = %s "
        f"FROM {Queue._meta.db_table} AS q "
        "WHERE s.id = ANY(%s) AND q.id = s.queue_id AND s.state = %s AND s.launch_attempts < %s "
        f"RETURNING {', '.join(columns)}"
    )
    params = [timezone.now() + scheduler.attempt_deadline(), sorted(set(step_pks)), StepState.LAUNCHING,
              settings.LAUNCH_MAX_ATTEMPTS]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    claimed, queues = {}, {}
    for row in rows:
        values = [field_from_db(f, value) for f, value in zip(step_fields + queue_fields, row)]
        step = QueueRequest.from_db(connection.alias, [f.attname for f in step_fields], values[: len(step_fields)])
        queue_values = values[len(step_fields):]
        # One Queue object per queue, as the related manager would share it.
        step.queue = queues.get(step.queue_id) or queues.setdefault(
            step.queue_id, Queue.from_db(connection.alias, [f.attname for f in queue_fields], queue_values))
        claimed[step.pk] = step
    return claimed


def _record_launch(step: QueueRequest, handle: dict) -> str:
    """One UPDATE in the usual case: the handle and launching → pending together. No queue status
    refresh and no advance: pending counts as launched like launching, and no edge waits for it."""
    now = timezone.now()
    recorded = step_transition(step, StepState.PENDING, from_states=[StepState.LAUNCHING], in_run=step.run,
                               mark_queue=False, launcher_handle=handle, launched_at=now, next_launch_at=None)
    if not recorded:
        return step_record_late_launch(step, handle, now)
    logger.info("step launched", extra={"queue_id": step.queue.queue_id, "step": step.name, "job": step.job_name})
    return "launched"


def step_record_late_launch(step: QueueRequest, handle: dict, now) -> str:
    """The record of a launch whose step is no longer `launching` in this run: 'launched' or 'discarded'."""
    # A fast worker may already have reported `started` (launching → running), or a stop came
    # meanwhile: record the handle all the same (the stop flow needs to know the launch happened).
    with transaction.atomic():
        recorded = QueueRequest.objects.filter(
            pk=step.pk, run=step.run, state__in=StepState.LAUNCHED
        ).update(launcher_handle=handle, launched_at=now, next_launch_at=None) == 1
        if recorded:
            step.launcher_handle, step.launched_at = handle, now
            if QueueRequest.objects.filter(pk=step.pk, state=StepState.STOPPING).exists():
                # Its stop command may have gone out before the workload existed: send it again.
                enqueue_on_commit(STEP_SEND_STOP, step.pk, about=step)
    if not recorded:
        # The step ended (e.g. a stop ended it while no workload could be seen yet) or is in
        # another run: what was just created belongs to no live step.
        logger.warning("launch returned after the step moved on; removing its workload",
                       extra={"queue_id": step.queue.queue_id, "step": step.name, "job": step.job_name})
        scheduler.step_discard(step.pk, job_name=step.job_name, step=step)
        return "discarded"
    logger.info("step launched", extra={"queue_id": step.queue.queue_id, "step": step.name, "job": step.job_name})
    return "launched"


def step_launch_attempt_failed(step: QueueRequest, error: Exception) -> float | None:
    """Fail the step when the error is permanent or the budget is spent; else the retry countdown."""
    reason = str(error) or type(error).__name__
    attempts = step.launch_attempts  # as counted by this attempt's claim
    if isinstance(error, LaunchError) and error.permanent:
        _fail_launch(step, f"permanent error: {reason}")
        return None
    if attempts >= settings.LAUNCH_MAX_ATTEMPTS:
        _fail_launch(step, f"gave up after {attempts} attempts: {reason}")
        return None
    countdown = settings.LAUNCH_RETRY_BACKOFF_SECONDS * 2 ** (attempts - 1)
    # Reconcile re-sends the launch only once this has passed, so it never starts a second chain
    # beside this one while it backs off.
    QueueRequest.objects.filter(pk=step.pk, run=step.run, state=StepState.LAUNCHING).update(
        message=f"Launch attempt {attempts} of {settings.LAUNCH_MAX_ATTEMPTS} failed: {reason}",
        next_launch_at=timezone.now() + timedelta(seconds=countdown) + scheduler.attempt_deadline(),
    )
    logger.warning("step launch attempt failed", extra={"queue_id": step.queue.queue_id, "step": step.name,
                                                         "attempt": attempts, "error": reason})
    return countdown


def _fail_launch(step: QueueRequest, reason: str) -> None:
    if step_transition(step, StepState.FAILED, from_states=[StepState.LAUNCHING], in_run=step.run, message=f"Launch failed ({reason})"):
        logger.warning("step launch failed", extra={"queue_id": step.queue.queue_id, "step": step.name, "error": reason})
        enqueue(QUEUE_ADVANCE, step.queue_id, about=step.queue)


def steps_launch(step_pks: list[int]) -> dict[int, str]:
    """Launch these steps (of one queue, ready together); per step 'launched', 'skipped', 'failed',
    'discarded' or 'retrying' (its `step_launch` task sent with the backoff)."""
    claimed = claim_attempts(step_pks)
    outcome = {pk: step_launch_unclaimed(pk) for pk in step_pks if pk not in claimed}
    steps = [claimed[pk] for pk in sorted(claimed)]
    results = launch_many(scheduler.get_launcher(), steps) if steps else []  # step_launch's launcher
    launched = [(step, result) for step, result in zip(steps, results) if not isinstance(result, BaseException)]
    recorded = steps_record_launches(launched)
    for step, handle in launched:
        if step.pk in recorded:
            outcome[step.pk] = "launched"
            logger.info("step launched", extra={"queue_id": step.queue.queue_id, "step": step.name,
                                                "job": step.job_name})
        else:
            outcome[step.pk] = step_record_late_launch(step, handle, timezone.now())
    for step, result in zip(steps, results):
        if isinstance(result, BaseException):
            outcome[step.pk] = _failed_attempt(step, result)
    return outcome


def launch_many(launcher, steps: list[QueueRequest]) -> list:
    """The launcher's `launch` of each step, concurrently where the launcher can: per step its handle
    or the exception its launch raised (one step's failure never stops another's launch)."""
    many = getattr(launcher, "launch_many", None)
    if many is not None:
        return many(steps)
    results = []
    for step in steps:
        try:
            results.append(launcher.launch(step))
        except Exception as exc:  # noqa: BLE001 — handed to the step's own failure handling
            results.append(exc)
    return results


def _failed_attempt(step: QueueRequest, error: Exception) -> str:
    """As `step_launch` handles a failed attempt, with the retry as the step's own `step_launch` task
    (Celery's retry of that task is this: the same task sent again after the countdown)."""
    countdown = step_launch_attempt_failed(step, error)
    if countdown is None:
        return "failed"
    enqueue(STEP_LAUNCH, step.pk, eta=timezone.now() + timedelta(seconds=countdown), about=step)
    return "retrying"


def steps_record_launches(launched: list[tuple[QueueRequest, dict]]) -> set[int]:
    """Record launches (launching → pending in the same run, the handle, `launched_at`) in ONE
    statement in autocommit, with every `step_state_writing` record of each changed step (a
    data-modifying CTE: each record exists exactly when its step's change does); `step_state_changed`
    then reaches every receiver once per changed step, as for `step_launch`'s record. Returns the pks
    recorded; the rest moved on meanwhile (the caller records them late)."""
    if not launched:
        return set()
    now = timezone.now()
    table, encoder = QueueRequest._meta.db_table, QueueRequest._meta.get_field("launcher_handle").encoder
    values = {"state": StepState.PENDING, "state_changed_at": now, "updated_at": now, "launched_at": now,
              "next_launch_at": None}
    recorded = execute_with_records(
        f"UPDATE {table} AS s SET state = %s, state_changed_at = %s, updated_at = %s, launched_at = %s, "
        "next_launch_at = NULL, launcher_handle = v.handle::jsonb "
        "FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS v(id, run, handle) "
        "WHERE s.id = v.id AND s.state = %s AND s.run = v.run RETURNING s.id",
        [StepState.PENDING, now, now, now, [s.pk for s, _ in launched], [s.run for s, _ in launched],
         [json.dumps(handle, cls=encoder) for _, handle in launched], StepState.LAUNCHING],
        [step for step, _ in launched], StepState.PENDING)
    for step, handle in launched:
        steps_changed([step], recorded, StepState.PENDING, {**values, "launcher_handle": handle})
    return recorded
