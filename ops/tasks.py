"""Celery tasks of the ops app (autodiscovered: `ops` is an installed app). Thin: they call services."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings

from ops.retention import history_prune


@shared_task(name="ops.tasks.prune_history", ignore_result=True)
def prune_history() -> dict:
    """Beat: prune old telemetry and processed commands (ops.retention); idempotent, safe to overlap."""
    # Half the soft time limit: the run stops between batches well before Celery would kill it;
    # the next run continues where this one stopped.
    report = history_prune(max_seconds=settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    return {
        "telemetry_deleted": report.telemetry.deleted,
        "commands_deleted": report.commands.deleted,
        "complete": report.complete,
    }
