"""The scheduler: stopping, removing workloads and reconcile (advancing one queue is `jobs.advance`,
launching a step `jobs.launching`).

Everything here is level-triggered: `queue_advance` (jobs/advance.py) looks at the whole queue
and does what its state calls for, so running it twice, late, or after lost events is harmless.
`reconcile` compares every launched step with what the launcher observes and then advances the queues that need it:
those with step changes no advance has acted on yet (`Queue.changes_pending`, counted by every
transition in its own transaction, so a lost advance task is still caught) and those where time
alone may call for something (a consumer that may drain). Its work follows what changed, not the
number of active queues.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Exists, OuterRef
from django.utils import timezone

from jobs import k8s_heartbeat
from jobs.advance import queue_advance
from jobs.announce import QUEUE_ADVANCE, STEP_LAUNCH, enqueue
from jobs.launchers import LaunchError, Observation, Phase, get_launcher
from jobs.services import step_transition
from jobs.signals import reconcile_finished
from jobs.stopping import steps_send_stop
from queues.catalogue import TARGETS
from queues.models import Queue, QueueRequest, StepState

logger = logging.getLogger(__name__)

RECONCILE_LOCK_ID = 0x5F0E_0001  # pg advisory lock: one reconcile pass at a time, cluster-wide


def attempt_deadline() -> timedelta:
    """How long one launch attempt may take: after it, no task can still be running it (the Celery
    hard time limit kills it), so reconcile may send the launch again. Each claim of an attempt
    (jobs.launching) sets it as the step's `next_launch_at`."""
    return timedelta(seconds=max(settings.LAUNCH_STUCK_SECONDS, settings.CELERY_TASK_TIME_LIMIT))


def step_discard(step_pk: int, *, job_name: str, step: QueueRequest | None = None) -> None:
    """Remove the workload of one run of a step that ended (failed, stopped, lost) or moved on.

    Keeps the log tail first (the step's only record once the pods are gone). Raises LaunchError
    when the launcher cannot remove it (the task retries).
    """
    step = step or QueueRequest.objects.select_related("queue").filter(pk=step_pk).first()
    if step is None:
        return
    current = QueueRequest.objects.filter(pk=step_pk).values_list("state", "job_name").first()
    same_run = current is not None and current[1] == job_name
    if same_run and current[0] not in StepState.TERMINAL:
        return  # never remove the workload of a live run
    step.job_name = job_name
    launcher = get_launcher()
    if same_run:
        logs = _safe_logs(step, launcher)
        if logs:
            QueueRequest.objects.filter(pk=step_pk, job_name=job_name, logs="").update(logs=logs)
    launcher.discard(step)


def step_send_stop(step_pk: int) -> None:
    """First half of a stop: the graceful command. The forced end is `step_force_stop` at the end of the
    grace period (reconcile forces it too, should that task be lost)."""
    step = QueueRequest.objects.select_related("queue").filter(pk=step_pk).first()
    if step is None or step.state != StepState.STOPPING:
        return
    steps_send_stop([step])


def step_force_stop(step_pk: int) -> bool:
    """Second half of a stop, due at stop_requested_at + grace: remove the workload of a step still
    stopping. Does nothing before the deadline (an early or redelivered task) or once the step ended;
    the next reconcile pass sees the workload missing and ends the step. Returns whether it removed."""
    step = QueueRequest.objects.select_related("queue").filter(pk=step_pk).first()
    if step is None or step.state != StepState.STOPPING or step.stop_requested_at is None:
        return False
    if timezone.now() - step.stop_requested_at < timedelta(seconds=settings.STOP_GRACE_SECONDS):
        return False
    try:
        get_launcher().stop(step, force=True)
    except LaunchError as exc:  # reconcile forces it again on its next pass
        logger.warning("forced stop failed: %s", exc, extra={"queue_id": step.queue.queue_id, "step": step.name})
        return False
    return True


def reconcile() -> dict:
    """One level-triggered pass over every launched step and every active queue.

    With a healthy workload watcher (`manage.py watch_workloads`, jobs/k8s_watch.py: its heartbeat is
    fresh) the watcher observes the cluster and applies every change itself, so the pass does only
    the database's part (launches to send again, queues to advance, log tails); without one it lists
    the cluster and observes every launched step, as it always did."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RECONCILE_LOCK_ID])
        if not cursor.fetchone()[0]:
            return {"skipped": True}
    started = time.monotonic()
    try:
        watcher = k8s_heartbeat.healthy_watcher() if settings.JOB_LAUNCHER == "kubernetes" else None
        summary = _reconcile_steps(observe=watcher is None)
        if watcher is not None:
            summary["watcher"] = watcher
        for queue_pk in _queues_to_advance():
            queue_advance(queue_pk)
        _capture_logs()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RECONCILE_LOCK_ID])
    _observe_reconcile(time.monotonic() - started)
    return summary


def _queues_to_advance() -> list[int]:
    """Queues with step changes no advance acted on yet (whoever made them: this pass, telemetry,
    a launch; also when the advance announced for them was lost), and queues where time alone may
    call for a drain. Both come from indexes over the few live rows, not from the history."""
    changed = set(Queue.objects.needing_advance().values_list("pk", flat=True))
    return sorted(changed | _drain_candidates())


def _drain_candidates() -> set[int]:
    """Queues with a running consumer whose producers of the same topic all succeeded: whether it
    caught up or idled long enough is decided by queue_advance (DESIGN §5 rule 4)."""
    consumers = [t for t, spec in TARGETS.items() if spec.topic_role == "consumer"]
    producers = QueueRequest.objects.filter(
        queue_id=OuterRef("queue_id"), kafka_topic=OuterRef("kafka_topic"),
        target__in=[t for t, spec in TARGETS.items() if spec.topic_role == "producer"],
    )
    running = QueueRequest.objects.filter(state=StepState.RUNNING, target__in=consumers).exclude(kafka_topic="")
    return set(running.filter(Exists(producers), ~Exists(producers.exclude(state=StepState.SUCCEEDED)))
               .values_list("queue_id", flat=True))


# What reconcile never reads of a step or its queue: large, and not needed to compare with the cluster.
_RECONCILE_DEFERRED = ("params", "logs", "extra", "collection_inputs", "launcher_handle",
                       "queue__payload", "queue__canonical_payload", "queue__warnings")


# What a pass reads of every launched step to compare it with one cluster snapshot; the whole row
# (and its queue) is read only for the steps whose observation may change something.
_RECONCILE_LIGHT = ("id", "queue_id", "state", "message", "job_name", "run", "launched_at", "next_launch_at",
                    "state_changed_at")


def reconcile_workloads(*, observer, job_names=None) -> dict:
    """Apply what the workload watcher sees (`observer`: its cache, jobs/k8s_informer.py) to the steps
    owning `job_names` (None: every launched step, the watcher's periodic sweep) with the same code
    as a pass; queues whose steps changed get their advance announced at once."""
    return _reconcile_steps(observer=observer, job_names=job_names)


def _reconcile_steps(*, observe: bool = True, observer=None, job_names=None) -> dict:
    """Compare launched steps with what `observer` (default: the launcher, which lists the cluster)
    sees and act on the differences. `observe=False`: only the launches to send again (a healthy
    watcher observes the rest). `job_names`: only the steps of those Jobs (watcher events)."""
    launcher = get_launcher()
    observer = observer or launcher
    now = timezone.now()
    light = hasattr(observer, "observe_many")
    steps = QueueRequest.objects.filter(state__in=StepState.LAUNCHED if observe else [StepState.LAUNCHING])
    if job_names is not None:
        steps = steps.filter(job_name__in=list(job_names)).exclude(state=StepState.LAUNCHING)
    # No order: the model's default one joins every step's queue just to sort.
    steps = list(steps.order_by().only(*_RECONCILE_LIGHT) if light else steps.select_related("queue").defer(*_RECONCILE_DEFERRED))
    summary = {"observed": 0, "changed": 0, "relaunched": 0}
    for step in steps:
        if step.state == StepState.LAUNCHING and _launch_due(step, now) and _resend_launch(step, now):
            summary["relaunched"] += 1
    if not observe or (job_names is not None and not steps):
        return summary
    observed = [s for s in steps if s.state != StepState.LAUNCHING]
    try:
        if light:
            observations = observer.observe_many(observed)
        else:
            observations = {s.pk: launcher.status(s) for s in observed}
    except LaunchError as exc:
        logger.warning("reconcile could not observe workloads: %s", exc)
        return summary
    todo = []
    for step in observed:
        observation = observations.get(step.pk)
        if observation is None:
            continue
        summary["observed"] += 1
        if not _nothing_to_do(step, observation):
            todo.append((step.pk, observation))
    if light and todo:
        # One query for the few steps to act on (the steady state has none); each decides from its fresh row.
        full = (QueueRequest.objects.filter(state__in=StepState.LAUNCHED).select_related("queue")
                .defer(*_RECONCILE_DEFERRED).in_bulk([pk for pk, _ in todo]))
        todo = [(full[pk], observation) for pk, observation in todo if pk in full]
    elif todo:
        by_pk = {s.pk: s for s in observed}
        todo = [(by_pk[pk], observation) for pk, observation in todo]
    for step, observation in todo:
        if apply_observation(step, observation, launcher=launcher, now=now):
            summary["changed"] += 1
            if observer is not launcher:  # the watcher: no pass follows to advance the queue
                enqueue(QUEUE_ADVANCE, step.queue_id, about=step.queue)
    return summary


def _nothing_to_do(step: QueueRequest, observation: Observation) -> bool:
    """The steady state, decided from the light row: a pending or running step whose workload is
    pending or running as recorded (`apply_observation` would change and write nothing)."""
    phase, reason = observation.phase, observation.reason
    if step.state not in (StepState.PENDING, StepState.RUNNING) or phase not in (Phase.PENDING, Phase.RUNNING):
        return False
    if phase == Phase.RUNNING and step.state == StepState.PENDING:
        return False
    return not reason or reason == step.message


def _launch_due(step: QueueRequest, now) -> bool:
    """A launching step whose launch should have happened by now (its worker died, a task was lost).

    `next_launch_at` is the end of the attempt in flight or of the retry backing off; before any
    attempt, LAUNCH_STUCK_SECONDS after the step became launching.
    """
    due = step.next_launch_at or step.state_changed_at + timedelta(seconds=settings.LAUNCH_STUCK_SECONDS)
    return now >= due


def _resend_launch(step: QueueRequest, now) -> bool:
    """Send the launch again, once: compare-and-set on the deadline this pass saw."""
    moved = QueueRequest.objects.filter(
        pk=step.pk, state=StepState.LAUNCHING, run=step.run, next_launch_at=step.next_launch_at
    ).update(next_launch_at=now + attempt_deadline())
    if moved:
        enqueue(STEP_LAUNCH, step.pk, about=step)
    return bool(moved)


def _launch_settled(step: QueueRequest, now) -> bool:
    """Whether *missing* can mean *gone*: the launch returned (launched_at), or no attempt can still
    be creating the workload (none started, or its deadline passed)."""
    return step.launched_at is not None or step.next_launch_at is None or now >= step.next_launch_at


def apply_observation(step: QueueRequest, observation: Observation, *, launcher, now) -> bool:
    """Bring one step in line with what the launcher sees; returns True if its state changed."""
    phase, reason = observation.phase, observation.reason
    if phase == Phase.MISSING and not _launch_settled(step, now):
        return False  # a launch in flight may still create it; ending now would leak what it creates
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
        return step_transition(step, StepState.RUNNING, from_states=[StepState.PENDING], started_at=step.started_at or now, message=reason)
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
    changed = step_transition(step, to, from_states=[step.state], message=message, **({"logs": logs} if logs else {}))
    if changed:
        logger.info("step ended", extra={"queue_id": step.queue.queue_id, "step": step.name, "state": to})
    return changed


def _safe_logs(step: QueueRequest, launcher) -> str:
    try:
        return launcher.logs(step, tail_bytes=settings.STEP_LOG_TAIL_BYTES)
    except LaunchError:
        return ""


def _capture_logs() -> None:
    """Keep the log tail of recently ended steps before the workload (pod, TTL) disappears.

    For at most one reconcile interval per pass: on a cluster each tail is a pod LIST and a log read,
    and this runs under the reconcile lock — reading 50 at once after a burst of steps ended by
    telemetry made passes run into the task time limit, so reconcile acted every ~30 s, not every
    interval. What is left waits for the next pass (the oldest first).
    """
    launcher = get_launcher()
    since = timezone.now() - timedelta(hours=1)
    deadline = time.monotonic() + settings.RECONCILE_INTERVAL_SECONDS
    for step in QueueRequest.objects.filter(
        state__in=StepState.TERMINAL, finished_at__gte=since, logs="", launched_at__isnull=False
    ).select_related("queue").order_by("finished_at")[:50]:
        if time.monotonic() >= deadline:
            break
        logs = _safe_logs(step, launcher) or "(no output captured)"
        QueueRequest.objects.filter(pk=step.pk, logs="").update(logs=logs)


def _observe_reconcile(seconds: float) -> None:
    reconcile_finished.send(sender=reconcile, seconds=seconds)
