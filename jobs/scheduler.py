"""The scheduler: which steps launch now, drain, failure policy (DESIGN §5), and reconcile.

Everything here is level-triggered: `queue_advance` looks at the whole queue and does what its
state calls for, so running it twice, late, or after lost events is harmless. `reconcile` compares
every launched step with what the launcher observes and then advances every active queue.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs.launchers import LaunchError, Observation, Phase, get_launcher
from queues.catalogue import TARGETS
from queues.models import DependencyKind, Queue, QueueRequest, StepState
from queues.services import queue_refresh_status, request_step_stop

logger = logging.getLogger(__name__)

RECONCILE_LOCK_ID = 0x5F0E_0001  # pg advisory lock: one reconcile pass at a time, cluster-wide


def queue_advance(queue_pk: int) -> list[int]:
    """Apply DESIGN §5 to one queue; returns the pks of steps to launch (enqueued on commit)."""
    to_launch: list[int] = []
    with transaction.atomic():
        queue = Queue.objects.lock(queue_pk, missing_ok=True)
        if queue is None:
            return []
        steps = {s.pk: s for s in queue.steps.all()}
        edges = list(queue.edges.all())
        upstreams: dict[int, list] = {pk: [] for pk in steps}
        for edge in edges:
            upstreams[edge.downstream_id].append((steps[edge.upstream_id], edge.kind))

        failed = [s for s in steps.values() if s.state in StepState.FAILED_STATES]
        if failed and settings.FAILURE_POLICY == "stop_queue":
            reason = f"Step {failed[0].name} {failed[0].state}: {failed[0].message}".strip().rstrip(":")
            if not queue.message:
                Queue.objects.filter(pk=queue.pk).update(message=reason)
            for step in steps.values():
                if not step.is_terminal and not step.stop_requested_at:
                    request_step_stop(step, reason=f"Queue failed: {reason}")
        elif not queue.stop_requested_at:
            _cancel_unreachable(steps.values(), upstreams)
            for step in steps.values():
                if step.state == StepState.WAITING and _dependencies_met(upstreams[step.pk]):
                    if step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING], message=""):
                        to_launch.append(step.pk)
            _drain_consumers(steps.values())
        queue_refresh_status(queue=queue)

        if to_launch:
            from jobs.tasks import enqueue_on_commit, step_launch

            for pk in to_launch:
                enqueue_on_commit(step_launch, pk)
    return to_launch


def _dependencies_met(upstream_edges) -> bool:
    for upstream, kind in upstream_edges:
        if kind == DependencyKind.SUCCESS and upstream.state != StepState.SUCCEEDED:
            return False
        if kind == DependencyKind.READY and not upstream.is_ready:
            return False
    return True


def _cancel_unreachable(steps, upstreams) -> None:
    """A waiting step whose upstream ended without success can never start: cancel it."""
    for step in steps:
        if step.state != StepState.WAITING:
            continue
        for upstream, _kind in upstreams[step.pk]:
            if upstream.is_terminal and upstream.state != StepState.SUCCEEDED:
                step.transition(
                    StepState.STOPPED, from_states=[StepState.WAITING],
                    message=f"Cancelled: upstream {upstream.name} ended {upstream.state}.",
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
        request_step_stop(consumer, reason=reason, drain=True)


def step_launch(step_pk: int) -> str:
    """Launch one step (idempotent). Returns 'launched', 'skipped', or raises LaunchError to retry."""
    step = QueueRequest.objects.select_related("queue").filter(pk=step_pk).first()
    if step is None or step.state != StepState.LAUNCHING:
        return "skipped"
    QueueRequest.objects.filter(pk=step.pk).update(launch_attempts=step.launch_attempts + 1)
    handle = get_launcher().launch(step)  # LaunchError propagates to the task's retry policy
    now = timezone.now()
    # Store the handle first: a fast worker may already have reported `started` (launching → running).
    QueueRequest.objects.filter(pk=step.pk).update(launcher_handle=handle, launched_at=now)
    step.launcher_handle, step.launched_at = handle, now
    step.transition(StepState.PENDING, from_states=[StepState.LAUNCHING])
    queue_refresh_status(queue=step.queue)
    logger.info("step launched", extra={"queue_id": step.queue.queue_id, "step": step.name, "job": step.job_name})
    return "launched"


def step_launch_failed(step_pk: int, error: LaunchError) -> None:
    step = QueueRequest.objects.filter(pk=step_pk).first()
    if step is None:
        return
    kind = "permanent error" if error.permanent else f"gave up after {step.launch_attempts} attempts"
    if step.transition(StepState.FAILED, from_states=[StepState.LAUNCHING], message=f"Launch failed ({kind}): {error}"):
        logger.warning("step launch failed", extra={"queue_id": step.queue.queue_id, "step": step.name, "error": str(error)})
        from jobs.tasks import enqueue, queue_advance

        enqueue(queue_advance, step.queue_id)


def step_stop_now(step_pk: int) -> None:
    """First half of a stop: the graceful command. The forced end comes from reconcile after the grace period."""
    step = QueueRequest.objects.select_related("queue").filter(pk=step_pk).first()
    if step is None or step.state != StepState.STOPPING:
        return
    if settings.KAFKA_ENABLED:
        try:
            from kafkabus.publisher import publish_stop

            publish_stop(step)
        except Exception:  # the grace period and the forced stop still end the step
            logger.exception("could not publish the stop command", extra={"queue_id": step.queue.queue_id, "step": step.name})
    try:
        get_launcher().stop(step, force=False)
    except LaunchError as exc:
        logger.warning("graceful stop failed: %s", exc, extra={"queue_id": step.queue.queue_id, "step": step.name})


def reconcile() -> dict:
    """One level-triggered pass over every launched step and every active queue."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RECONCILE_LOCK_ID])
        if not cursor.fetchone()[0]:
            return {"skipped": True}
    started = time.monotonic()
    try:
        summary = _reconcile_steps()
        for queue_pk in _queues_to_advance():
            queue_advance(queue_pk)
        _capture_logs()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RECONCILE_LOCK_ID])
    _observe_reconcile(time.monotonic() - started)
    return summary


def _queues_to_advance() -> list[int]:
    """Active queues, and any queue that still has unfinished steps (a safety net whatever its
    status says): drains, launches after lost events and forced stops depend on this pass."""
    active = set(Queue.objects.active().values_list("pk", flat=True))
    unfinished = set(QueueRequest.objects.exclude(state__in=StepState.TERMINAL).values_list("queue_id", flat=True))
    return sorted(active | unfinished)


def _reconcile_steps() -> dict:
    launcher = get_launcher()
    now = timezone.now()
    steps = list(QueueRequest.objects.filter(state__in=StepState.LAUNCHED).select_related("queue"))
    summary = {"observed": 0, "changed": 0, "relaunched": 0}
    stuck = [s for s in steps if s.state == StepState.LAUNCHING and now - s.state_changed_at > timedelta(seconds=settings.LAUNCH_STUCK_SECONDS)]
    if stuck:
        from jobs.tasks import enqueue, step_launch

        for step in stuck:
            enqueue(step_launch, step.pk)
            QueueRequest.objects.filter(pk=step.pk).update(state_changed_at=now)
        summary["relaunched"] = len(stuck)
    observed = [s for s in steps if s.state != StepState.LAUNCHING]
    try:
        if hasattr(launcher, "observe_many"):
            observations = launcher.observe_many(observed)
        else:
            observations = {s.pk: launcher.status(s) for s in observed}
    except LaunchError as exc:
        logger.warning("reconcile could not observe workloads: %s", exc)
        return summary
    for step in observed:
        observation = observations.get(step.pk)
        if observation is None:
            continue
        summary["observed"] += 1
        if apply_observation(step, observation, launcher=launcher, now=now):
            summary["changed"] += 1
    return summary


def apply_observation(step: QueueRequest, observation: Observation, *, launcher, now) -> bool:
    """Bring one step in line with what the launcher sees; returns True if its state changed."""
    phase, reason = observation.phase, observation.reason
    if step.state == StepState.STOPPING:
        if phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.MISSING):
            to = StepState.SUCCEEDED if step.drain_requested_at else StepState.STOPPED
            return _end(step, to, step.message or "Stopped.", launcher)
        grace = timedelta(seconds=settings.STOP_GRACE_SECONDS)
        if step.stop_requested_at and now - step.stop_requested_at >= grace:
            try:
                launcher.stop(step, force=True)
            except LaunchError as exc:
                logger.warning("forced stop failed: %s", exc, extra={"queue_id": step.queue.queue_id, "step": step.name})
        return False
    if phase == Phase.RUNNING and step.state == StepState.PENDING:
        return step.transition(StepState.RUNNING, from_states=[StepState.PENDING], started_at=step.started_at or now, message=reason)
    if phase in (Phase.PENDING, Phase.RUNNING):
        # Surface what the cluster says (ImagePullBackOff, CrashLoopBackOff, Unschedulable …).
        if reason and reason != step.message:
            QueueRequest.objects.filter(pk=step.pk, state=step.state).update(message=reason)
        return False
    if phase == Phase.SUCCEEDED:
        return _end(step, StepState.SUCCEEDED, step.message or "Completed.", launcher)
    if phase == Phase.FAILED:
        return _end(step, StepState.FAILED, reason or "The workload failed.", launcher)
    if phase == Phase.MISSING:
        return _end(step, StepState.LOST, reason or "The workload vanished.", launcher)
    return False


def _end(step: QueueRequest, to: str, message: str, launcher) -> bool:
    logs = _safe_logs(step, launcher)
    # Compare-and-set against the state this decision was made from: if a stop (or telemetry) moved
    # the step since reconcile read it, the next pass decides again from the fresh state.
    changed = step.transition(to, from_states=[step.state], message=message, **({"logs": logs} if logs else {}))
    if changed:
        logger.info("step ended", extra={"queue_id": step.queue.queue_id, "step": step.name, "state": to})
    return changed


def _safe_logs(step: QueueRequest, launcher) -> str:
    try:
        return launcher.logs(step, tail_bytes=settings.STEP_LOG_TAIL_BYTES)
    except LaunchError:
        return ""


def _capture_logs() -> None:
    """Keep the log tail of recently ended steps before the workload (pod, TTL) disappears."""
    launcher = get_launcher()
    since = timezone.now() - timedelta(hours=1)
    for step in QueueRequest.objects.filter(
        state__in=StepState.TERMINAL, finished_at__gte=since, logs="", launched_at__isnull=False
    ).select_related("queue")[:50]:
        logs = _safe_logs(step, launcher) or "(no output captured)"
        QueueRequest.objects.filter(pk=step.pk, logs="").update(logs=logs)


def _observe_reconcile(seconds: float) -> None:
    try:
        from ops.metrics import observe_reconcile
    except ImportError:
        return
    observe_reconcile(seconds)
