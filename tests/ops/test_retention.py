"""Retention (issue #10 §6): old telemetry and processed commands are pruned in bounded batches,
never what a queue that is still open needs."""
from __future__ import annotations

import io
import itertools
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from kafkabus.models import ProcessedCommand
from queues.models import Queue, QueueStatus, TelemetryEvent
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

_keys = itertools.count()


@pytest.fixture(autouse=True)
def retention(settings):
    settings.TELEMETRY_RETENTION_DAYS = 30
    settings.COMMAND_RETENTION_DAYS = 30
    settings.RETENTION_BATCH_SIZE = 5000


def queue_with_status(status: str) -> Queue:
    queue = make_queue()
    Queue.objects.filter(pk=queue.pk).update(status=status)
    return queue


def add_events(queue: Queue, count: int, *, days_old: float) -> list[int]:
    received = timezone.now() - timedelta(days=days_old)
    events = TelemetryEvent.objects.bulk_create(
        TelemetryEvent(
            queue=queue, event_key=f"retention-{next(_keys)}", status="progress", payload={"n": i}, received_at=received
        )
        for i in range(count)
    )
    return [event.pk for event in events]


def add_command(queue_id: str, *, days_old: float) -> ProcessedCommand:
    return ProcessedCommand.objects.create(
        command_id=f"cmd-{next(_keys)}", command="stop", status="accepted", queue_id=queue_id,
        received_at=timezone.now() - timedelta(days=days_old),
    )


def remaining(pks) -> set[int]:
    return set(TelemetryEvent.objects.filter(pk__in=pks).values_list("pk", flat=True))


def test_it_prunes_old_events_of_finished_queues_and_keeps_open_queues_events():
    """§6: finished queues' events older than the cut go; recent ones and every open queue's events stay."""
    from ops.retention import history_prune

    finished = {status: queue_with_status(status) for status in QueueStatus.TERMINAL}
    open_queues = {status: queue_with_status(status) for status in QueueStatus.ACTIVE}
    old_finished = [pk for queue in finished.values() for pk in add_events(queue, 3, days_old=31)]
    recent_finished = [pk for queue in finished.values() for pk in add_events(queue, 2, days_old=29)]
    old_open = [pk for queue in open_queues.values() for pk in add_events(queue, 3, days_old=90)]
    recent_open = [pk for queue in open_queues.values() for pk in add_events(queue, 2, days_old=1)]

    report = history_prune()

    assert remaining(old_finished) == set()
    assert remaining(recent_finished) == set(recent_finished)
    assert remaining(old_open) == set(old_open)
    assert remaining(recent_open) == set(recent_open)
    assert report.telemetry.deleted == len(old_finished)


def test_it_deletes_in_bounded_batches_walking_past_rows_it_keeps(settings):
    """§6: more rows than a batch → several short DELETEs of at most RETENTION_BATCH_SIZE rows each."""
    from ops.retention import history_prune

    settings.RETENTION_BATCH_SIZE = 10
    kept = add_events(queue_with_status(QueueStatus.RUNNING), 25, days_old=60)  # lowest ids: walked past
    pruned = add_events(queue_with_status(QueueStatus.SUCCEEDED), 43, days_old=45)
    fresh = add_events(queue_with_status(QueueStatus.FAILED), 12, days_old=2)

    with CaptureQueriesContext(connection) as captured:
        report = history_prune()

    deletes = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("DELETE") and "telemetryevent" in q["sql"]]
    assert report.telemetry.deleted == 43
    assert len(deletes) == len(report.telemetry.batches) >= 5
    assert max(report.telemetry.batches) <= 10 and sum(report.telemetry.batches) == 43
    assert remaining(pruned) == set()
    assert remaining(kept + fresh) == set(kept + fresh)


def test_it_prunes_processed_commands_by_age_keeping_those_of_open_queues(settings):
    """§6: processed commands older than COMMAND_RETENTION_DAYS go, unless their queue is still open."""
    from ops.retention import history_prune

    settings.RETENTION_BATCH_SIZE = 2
    done = queue_with_status(QueueStatus.STOPPED)
    running = queue_with_status(QueueStatus.RUNNING)
    old = [add_command(done.queue_id, days_old=40) for _ in range(3)] + [add_command("", days_old=40)]
    old_open = add_command(running.queue_id, days_old=40)
    recent = add_command(done.queue_id, days_old=3)

    report = history_prune()

    left = set(ProcessedCommand.objects.values_list("pk", flat=True))
    assert left == {old_open.pk, recent.pk}
    assert report.commands.deleted == len(old) and len(report.commands.batches) >= 2


def test_it_keeps_everything_when_a_retention_is_zero(settings):
    """§6: a retention of 0 days keeps that table's history forever."""
    from ops.retention import history_prune

    settings.TELEMETRY_RETENTION_DAYS = 0
    settings.COMMAND_RETENTION_DAYS = 0
    done = queue_with_status(QueueStatus.SUCCEEDED)
    events = add_events(done, 3, days_old=400)
    command = add_command(done.queue_id, days_old=400)

    report = history_prune()

    assert remaining(events) == set(events) and ProcessedCommand.objects.filter(pk=command.pk).exists()
    assert report.telemetry.deleted == report.commands.deleted == 0


def test_the_management_command_reports_without_deleting_on_dry_run():
    """§6: `manage.py prune_history --dry-run` counts what would go and deletes nothing; without it, prunes."""
    done = queue_with_status(QueueStatus.SUCCEEDED)
    events = add_events(done, 4, days_old=31)
    add_command(done.queue_id, days_old=31)

    out = io.StringIO()
    call_command("prune_history", "--dry-run", stdout=out)
    assert "would delete 4 telemetry events" in out.getvalue() and "1 processed command" in out.getvalue()
    assert remaining(events) == set(events) and ProcessedCommand.objects.count() == 1

    out = io.StringIO()
    call_command("prune_history", stdout=out)
    assert "deleted 4 telemetry events" in out.getvalue()
    assert remaining(events) == set() and ProcessedCommand.objects.count() == 0


def test_beat_runs_the_prune_task_which_celery_discovers(settings):
    """§6: the beat schedule names ops.tasks.prune_history, Celery autodiscovers it, and it prunes."""
    from queuemanager.celery import app

    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "ops.tasks.prune_history")
    assert entry["schedule"] == settings.RETENTION_INTERVAL_SECONDS
    app.loader.import_default_modules()
    assert "ops.tasks.prune_history" in app.tasks

    events = add_events(queue_with_status(QueueStatus.FAILED), 3, days_old=31)
    result = app.tasks["ops.tasks.prune_history"].apply()
    assert result.successful(), result.traceback
    assert result.result["telemetry_deleted"] == 3 and remaining(events) == set()
