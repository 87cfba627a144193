"""How the orchestration announces work to Celery: by task name, from the registry.

Services and the scheduler are what the tasks call, so they cannot import the tasks module
without an import circle; they name the task instead (the names are declared here and given
to the tasks in `jobs/tasks.py`, which `JobsConfig.ready()` registers in every process).
"""
from __future__ import annotations

import logging

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)

QUEUE_ADVANCE = "jobs.tasks.queue_advance_task"
STEP_LAUNCH = "jobs.tasks.step_launch_task"
STEP_SEND_STOP = "jobs.tasks.step_send_stop_task"
STEP_DISCARD = "jobs.tasks.step_discard_task"
RECONCILE = "jobs.tasks.reconcile_task"


def enqueue(task_name: str, *args) -> None:
    """Send a task now; if the broker is unreachable, log it and go on.

    Nothing is lost: every task here is also driven by the periodic reconcile (level-triggered),
    so a request must not fail (or a transaction roll back) because Redis is down for a moment.
    """
    task = current_app.tasks[task_name]  # a missing task is a programming error: let it raise
    try:
        task.delay(*args)
    except Exception:  # kombu/redis raise many kinds of connection errors
        logger.warning("could not enqueue %s%s; reconcile will catch up", task_name, args, exc_info=True)


def enqueue_on_commit(task_name: str, *args) -> None:
    """enqueue() once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: enqueue(task_name, *args))
