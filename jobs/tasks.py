"""Celery tasks: thin, take ids, re-read rows, call the function of the same name (jobs.scheduler,
jobs.launching, jobs.stopping).

Each task is `<function>_task`, registered under the explicit name `jobs.tasks.<function>_task`
(see `jobs/announce.py`, which sends them by that name). All are safe to run twice.
"""
from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init
from django.conf import settings

from jobs import announce, launching, scheduler, stopping
from jobs.launchers import LaunchError

logger = logging.getLogger(__name__)


@worker_init.connect
def _import_the_launcher(**kwargs) -> None:
    """In the worker's main process, before the pool forks its children: import the launcher there, so no
    child pays it in its first task. The `kubernetes` client takes ~2 s to import (more on a loaded node),
    and a cold child's first forced stop or launch was that much late (issue #12, stop latency)."""
    import importlib

    importlib.import_module(f"jobs.launchers.{settings.JOB_LAUNCHER}")


@shared_task(name=announce.QUEUE_ADVANCE, acks_late=True, ignore_result=True)
def queue_advance_task(queue_pk: int) -> None:
    scheduler.queue_advance(queue_pk)


@shared_task(name=announce.STEP_LAUNCH, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def step_launch_task(self, step_pk: int) -> str:
    # The budget lives in the database (launch_attempts), not in this chain's retry count: a chain
    # re-sent by reconcile continues the same budget instead of starting a new one.
    try:
        return launching.step_launch(step_pk)
    except launching.RetryLaunch as retry:
        raise self.retry(countdown=retry.countdown, exc=retry)


@shared_task(name=announce.STEPS_LAUNCH, acks_late=True, ignore_result=True)
def steps_launch_task(queue_pk: int, step_pks: list[int]) -> dict:
    # No retry of its own: a failed step's retry is its own step_launch_task (jobs.launching), and a
    # lost or killed batch is resent per step by reconcile once the claims' deadlines pass.
    return launching.steps_launch(step_pks)


@shared_task(name=announce.STEP_DISCARD, bind=True, acks_late=True, ignore_result=True, max_retries=5)
def step_discard_task(self, step_pk: int, job_name: str) -> None:
    try:
        scheduler.step_discard(step_pk, job_name=job_name)
    except LaunchError as exc:
        if exc.permanent:
            raise
        # Reconcile also removes live workloads of ended steps; this only makes it sooner.
        raise self.retry(exc=exc, countdown=settings.LAUNCH_RETRY_BACKOFF_SECONDS * 2 ** self.request.retries)


@shared_task(name=announce.STEP_SEND_STOP, acks_late=True, ignore_result=True)
def step_send_stop_task(step_pk: int) -> None:
    scheduler.step_send_stop(step_pk)


@shared_task(name=announce.STEP_FORCE_STOP, acks_late=True, ignore_result=True)
def step_force_stop_task(step_pk: int) -> None:
    scheduler.step_force_stop(step_pk)


@shared_task(name=announce.QUEUE_SEND_STOP, acks_late=True, ignore_result=True)
def queue_send_stop_task(queue_pk: int) -> None:
    stopping.queue_send_stop(queue_pk)


@shared_task(name=announce.QUEUE_FORCE_STOP, acks_late=True, ignore_result=True)
def queue_force_stop_task(queue_pk: int) -> None:
    stopping.queue_force_stop(queue_pk)


@shared_task(name=announce.RECONCILE, acks_late=True, ignore_result=True)
def reconcile_task() -> dict:
    return scheduler.reconcile()
