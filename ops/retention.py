"""Retention (DESIGN §6 / issue #10): prune old telemetry events and processed commands by age.

Both tables take rows forever otherwise. The walk goes through a table in primary-key order, one
window of RETENTION_BATCH_SIZE rows at a time (ids follow arrival, so the oldest rows come first),
and deletes the window's old rows with one DELETE — its own short transaction in autocommit, so
the hot tables are never locked for long and an interrupted run loses at most one batch. The walk
ends at the first window whose rows are all newer than the cut (or at the caller's deadline;
the next run goes on from there, since what was deleted is gone).

Kept whatever their age: everything of a queue that is not finished (its pages show its events,
and a redelivered command for it must still be recognised). The keep rule is part of the DELETE
itself, so a queue reopened (retried) between reading a window and deleting keeps its rows.
ArangoDB's mirror keeps its copies: it has its own retention.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

logger = logging.getLogger(__name__)


@dataclass
class TableReport:
    retention_days: int
    cutoff: datetime | None
    # One entry per DELETE (COUNT on a dry run) issued: the rows it removed, 0 when all were kept.
    batches: list[int] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(self.batches)


@dataclass
class PruneReport:
    telemetry: TableReport
    commands: TableReport
    dry_run: bool
    complete: bool  # False when the deadline stopped the walk before its end


def history_prune(
    *, now: datetime | None = None, dry_run: bool = False, batch_size: int | None = None, max_seconds: float | None = None
) -> PruneReport:
    """Delete telemetry events and processed commands older than their retention, in batches.

    Call it outside a transaction (beat task, management command): each batch commits on its own.
    `max_seconds` bounds one run (a Celery task must end before its time limit).
    """
    from kafkabus.models import ProcessedCommand
    from queues.models import Queue, QueueStatus, TelemetryEvent

    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    open_queue_ids = Queue.objects.filter(status__in=QueueStatus.ACTIVE).values("queue_id")
    tables = (
        ("telemetry", TelemetryEvent, settings.TELEMETRY_RETENTION_DAYS, models.Q(queue__status__in=QueueStatus.ACTIVE)),
        ("commands", ProcessedCommand, settings.COMMAND_RETENTION_DAYS, models.Q(queue_id__in=open_queue_ids)),
    )
    reports, complete = {}, True
    for name, model, days, keep in tables:
        cutoff = now - timedelta(days=days) if days > 0 else None
        report = reports[name] = TableReport(retention_days=days, cutoff=cutoff)
        if cutoff is not None and complete:
            complete = _prune_table(
                model, cutoff=cutoff, keep=keep, batch_size=batch_size, dry_run=dry_run, deadline=deadline, report=report
            )
        if report.deleted:
            logger.info(
                "retention: %s %d %s older than %s", "would delete" if dry_run else "deleted", report.deleted, name, cutoff
            )
    return PruneReport(telemetry=reports["telemetry"], commands=reports["commands"], dry_run=dry_run, complete=complete)


def _prune_table(model, *, cutoff, keep, batch_size, dry_run, deadline, report: TableReport) -> bool:
    """Walks `model` by primary key; True when it reached the rows newer than the cut."""
    after = 0
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        window = list(
            model.objects.filter(pk__gt=after).order_by("pk").values_list("pk", "received_at")[:batch_size]
        )
        if not window:
            return True
        after = window[-1][0]
        old = [pk for pk, received_at in window if received_at < cutoff]
        if old:
            doomed = model.objects.filter(pk__in=old, received_at__lt=cutoff).exclude(keep)
            report.batches.append(doomed.count() if dry_run else doomed.delete()[0])
        if len(old) < len(window) and window[-1][1] >= cutoff:
            # The window reached rows newer than the cut; ids follow arrival, so the rest is newer too.
            return True
