"""Celery tasks: thin, take ids, re-read rows, call jobs.scheduler. All are safe to run twice."""
from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction

from jobs import scheduler
from jobs.launchers import LaunchError

logger = logging.getLogger(__name__)


def enqueue(task, *args) -> None:
    """Send a task now; if the broker is unreachable, log it and go on.

    Nothing is lost: every task here is also driven by the periodic reconcile (level-triggered),
    so a request must not fail (or a transaction roll back) because Redis is down for a moment.
    """
    try:
        task.delay(*args)
    except Exception:  # kombu/redis raise many kinds of connection errors
        logger.warning("could not enqueue %s%s; reconcile will catch up", task.name, args, exc_info=True)


def enqueue_on_commit(task, *args) -> None:
    """enqueue() once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: enqueue(task, *args))


@shared_task(acks_late=True, ignore_result=True)
def queue_advance(queue_pk: int) -> None:
    scheduler.queue_advance(queue_pk)


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=None)
def step_launch(self, step_pk: int) -> str:
    # The budget lives in the database (launch_attempts), not in this chain's retry count: a chain
    # re-sent by reconcile continues the same budget instead of starting a new one.
    try:
        return scheduler.step_launch(step_pk)
    except scheduler.RetryLaunch as retry:
        raise self.retry(countdown=retry.countdown, exc=retry)


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=5)
def step_discard_task(self, step_pk: int, job_name: str) -> None:
    try:
        scheduler.step_discard(step_pk, job_name=job_name)
    except LaunchError as exc:
        if exc.permanent:
            raise
        # Reconcile also removes live workloads of ended steps; this only makes it sooner.
        raise self.retry(exc=exc, countdown=settings.LAUNCH_RETRY_BACKOFF_SECONDS * 2 ** self.request.retries)


@shared_task(acks_late=True, ignore_result=True)
def step_stop_task(step_pk: int) -> None:
    scheduler.step_stop_now(step_pk)


@shared_task(acks_late=True, ignore_result=True)
def reconcile() -> dict:
    return scheduler.reconcile()
