"""Launching a queue's ready steps together (issue #12, launch figures).

When an advance finds several steps ready at once (a queue's connectors, the example's two
producers), it sends ONE `steps_launch` task for them instead of one `step_launch` per step. The
task does what that many `step_launch` calls would, with fewer round trips:

- the claims in ONE statement (`scheduler.claim_attempts`: each step claimed or not exactly as
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

from django.db import connection
from django.utils import timezone

from jobs import scheduler
from jobs.announce import STEP_LAUNCH, enqueue
from queues.models import QueueRequest, StepState
from queues.signals import step_state_changed, step_state_writing

logger = logging.getLogger(__name__)


def steps_launch(step_pks: list[int]) -> dict[int, str]:
    """Launch these steps (of one queue, ready together); per step 'launched', 'skipped', 'failed',
    'discarded' or 'retrying' (its `step_launch` task sent with the backoff)."""
    claimed = scheduler.claim_attempts(step_pks)
    outcome = {pk: scheduler.step_launch_unclaimed(pk) for pk in step_pks if pk not in claimed}
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
            outcome[step.pk] = scheduler.step_record_late_launch(step, handle, timezone.now())
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
    countdown = scheduler.step_launch_attempt_failed(step, error)
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
    parts = [
        f"changed_all AS (UPDATE {table} AS s SET state = %s, state_changed_at = %s, updated_at = %s, "
        "launched_at = %s, next_launch_at = NULL, launcher_handle = v.handle::jsonb "
        "FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS v(id, run, handle) "
        "WHERE s.id = v.id AND s.state = %s AND s.run = v.run RETURNING s.id)"
    ]
    params = [StepState.PENDING, now, now, now, [s.pk for s, _ in launched], [s.run for s, _ in launched],
              [json.dumps(handle, cls=encoder) for _, handle in launched], StepState.LAUNCHING]
    for step, _handle in launched:
        for _receiver, record in step_state_writing.send(sender=QueueRequest, step=step, state=StepState.PENDING):
            if record:
                # The receiver's statement reads `changed(id)`: here, this step's row if it changed.
                parts.append(f"record_{len(parts)} AS (WITH changed AS (SELECT id FROM changed_all WHERE id = %s) "
                             f"{record[0]})")
                params.extend([step.pk, *record[1]])
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} SELECT id FROM changed_all", params)
        recorded = {row[0] for row in cursor.fetchall()}
    for step, handle in launched:
        if step.pk in recorded:
            previous = step.state
            for key, value in {**values, "launcher_handle": handle}.items():
                setattr(step, key, value)
            step_state_changed.send(sender=QueueRequest, step=step, previous=previous, state=StepState.PENDING,
                                    written_with_change=True)
    return recorded
