"""A queue's stop, fanned out in the worker: the commands to every stopping step, then one forced stop.

`queue_stop` (jobs/services.py) marks the steps in the request and announces two tasks per queue
instead of two per step; these are their bodies. Both are safe early, late and twice: they act only
on steps still `stopping`, and the forced stop only on those whose grace period has ended. Should a
task be lost, reconcile forces each step still stopping past its grace (scheduler.apply_observation).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from jobs.launchers import LaunchError, get_launcher
from queues.models import QueueRequest, StepState

logger = logging.getLogger(__name__)


def _stopping(queue_pk: int) -> list[QueueRequest]:
    return list(QueueRequest.objects.select_related("queue").filter(queue_id=queue_pk, state=StepState.STOPPING)
                .order_by("position"))


def queue_send_stop(queue_pk: int) -> int:
    """First half of a queue's stop: the graceful command to each of its stopping steps, confirmed by the
    broker together; returns how many steps it was sent to."""
    steps = _stopping(queue_pk)
    if steps:
        steps_send_stop(steps)
    return len(steps)


def steps_send_stop(steps: list[QueueRequest]) -> None:
    """The graceful command to each step (stopping, loaded with its queue), confirmed by the broker together,
    and the launcher's graceful stop (locally SIGTERM; nothing more on Kubernetes). Failures are logged:
    the grace period and the forced stop still end the steps."""
    if settings.KAFKA_ENABLED:
        try:
            from kafkabus.publisher import publish_stops

            publish_stops(steps)
        except Exception:  # kafkabus/confluent raise many kinds of errors; none may stop the rest
            logger.exception("could not publish the stop commands", extra={"queue_id": steps[0].queue.queue_id})
    launcher = get_launcher()
    for step in steps:
        try:
            launcher.stop(step, force=False)
        except LaunchError as exc:
            logger.warning("graceful stop failed: %s", exc, extra={"queue_id": step.queue.queue_id, "step": step.name})


def queue_force_stop(queue_pk: int) -> int:
    """Second half, due at the queue's stop + grace: remove the workloads of its steps still stopping whose
    grace has ended, in one call for them all where the launcher can (Kubernetes: one delete-collection of
    their Jobs). The next reconcile pass sees the workloads missing and ends the steps. Returns how many
    steps' workloads it removed (0 when early, redelivered or failed)."""
    deadline = timezone.now() - timedelta(seconds=settings.STOP_GRACE_SECONDS)
    due = [step for step in _stopping(queue_pk) if step.stop_requested_at and step.stop_requested_at <= deadline]
    if not due:
        return 0
    try:
        get_launcher().stop_many(due, force=True)
    except LaunchError as exc:  # reconcile forces each step again on its next pass
        logger.warning("forced stop failed: %s", exc, extra={"queue_id": due[0].queue.queue_id})
        return 0
    return len(due)
