"""How the orchestration announces work to Celery: by task name, from the registry.

Services and the scheduler are what the tasks call, so they cannot import the tasks module
without an import circle; they name the task instead (the names are declared here and given
to the tasks in `jobs/tasks.py`, which `JobsConfig.ready()` registers in every process).
"""
from __future__ import annotations

import logging
from datetime import datetime

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)

QUEUE_ADVANCE = "jobs.tasks.queue_advance_task"
STEP_LAUNCH = "jobs.tasks.step_launch_task"
STEPS_LAUNCH = "jobs.tasks.steps_launch_task"  # (queue pk, step pks): a queue's steps ready together
STEP_SEND_STOP = "jobs.tasks.step_send_stop_task"
STEP_FORCE_STOP = "jobs.tasks.step_force_stop_task"
STEP_DISCARD = "jobs.tasks.step_discard_task"
QUEUE_SEND_STOP = "jobs.tasks.queue_send_stop_task"
QUEUE_FORCE_STOP = "jobs.tasks.queue_force_stop_task"
RECONCILE = "jobs.tasks.reconcile_task"


# What the first argument of each task is, so Flower can show `queue=…, step=…` instead of `(24,)`.
_QUEUE_TASKS = {QUEUE_ADVANCE, QUEUE_SEND_STOP, QUEUE_FORCE_STOP, STEPS_LAUNCH}
_STEP_TASKS = {STEP_LAUNCH, STEP_SEND_STOP, STEP_FORCE_STOP, STEP_DISCARD}


def _readable(task_name: str, args: tuple, queue_id: str, step_name: str = "") -> str:
    if task_name in _QUEUE_TASKS:
        return f"(queue={queue_id})"
    return "(" + ", ".join([f"queue={queue_id}", f"step={step_name}", *(f"job={v}" for v in args[1:2])]) + ")"


def _names_held(task_name: str, about) -> tuple[str, str] | None:
    """(queue_id, step name) from the Queue or step the caller holds, without a query; None when
    they are not in memory (a step whose queue was never loaded)."""
    if about is None:
        return None
    if task_name in _QUEUE_TASKS:
        return (about.queue_id, "") if about._meta.model_name == "queue" else None
    queue = about._state.fields_cache.get("queue")  # loaded with the step (select_related, a related manager)
    return (queue.queue_id, about.name) if queue is not None else None


def describe(task_name: str, args: tuple, about=None) -> str | None:
    """The task's arguments as an operator reads them (Celery's `argsrepr`): from `about` (the Queue
    or step the caller holds) when given, else one small query by key."""
    from queues.models import Queue, QueueRequest

    if not args or task_name not in _QUEUE_TASKS | _STEP_TASKS:
        return None
    held = _names_held(task_name, about)
    if held is not None:
        return _readable(task_name, args, *held)
    pk = args[0]
    if task_name in _QUEUE_TASKS:
        queue_id = Queue.objects.filter(pk=pk).values_list("queue_id", flat=True).first()
        return _readable(task_name, args, queue_id) if queue_id else f"(queue #{pk} (gone))"
    names = QueueRequest.objects.filter(pk=pk).values_list("queue__queue_id", "name").first()
    if names is None:
        return f"(step #{pk} (gone))"
    return _readable(task_name, args, *names)


def enqueue(task_name: str, *args, eta: datetime | None = None, about=None) -> None:
    """Send a task now (to run at `eta` when given); if the broker is unreachable, log it and go on.

    `about` is the Queue or step (QueueRequest) the first argument names, when the caller holds it:
    Flower's readable arguments then cost no query (launch and advance send one task per step).

    Nothing is lost: every task here is also driven by the periodic reconcile (level-triggered),
    so a request must not fail (or a transaction roll back) because Redis is down for a moment.
    """
    task = current_app.tasks[task_name]  # a missing task is a programming error: let it raise
    try:
        argsrepr = describe(task_name, args, about)
    except Exception:  # the names are for reading only: never let them stop the task from being sent
        logger.warning("could not describe %s%s", task_name, args, exc_info=True)
        argsrepr = None
    try:
        task.apply_async(args, argsrepr=argsrepr, eta=eta)
    except Exception:  # kombu/redis raise many kinds of connection errors
        logger.warning("could not enqueue %s%s; reconcile will catch up", task_name, args, exc_info=True)


def enqueue_on_commit(task_name: str, *args, eta: datetime | None = None, about=None) -> None:
    """enqueue() once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: enqueue(task_name, *args, eta=eta, about=about))
