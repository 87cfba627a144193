"""Celery tasks: thin, take ids, re-read rows, call jobs.scheduler. All are safe to run twice."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from jobs import scheduler
from jobs.launchers import LaunchError


@shared_task(acks_late=True, ignore_result=True)
def queue_advance(queue_pk: int) -> None:
    scheduler.queue_advance(queue_pk)


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=None)
def step_launch(self, step_pk: int) -> str:
    try:
        return scheduler.step_launch(step_pk)
    except LaunchError as exc:
        attempts = self.request.retries + 1
        if exc.permanent or attempts >= settings.LAUNCH_MAX_ATTEMPTS:
            scheduler.step_launch_failed(step_pk, exc)
            return "failed"
        raise self.retry(exc=exc, countdown=settings.LAUNCH_RETRY_BACKOFF_SECONDS * 2 ** (attempts - 1))


@shared_task(acks_late=True, ignore_result=True)
def step_stop_task(step_pk: int) -> None:
    scheduler.step_stop_now(step_pk)


@shared_task(acks_late=True, ignore_result=True)
def reconcile() -> dict:
    return scheduler.reconcile()
