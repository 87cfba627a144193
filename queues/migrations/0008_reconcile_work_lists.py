"""Reconcile works from what changed (issue #12): a per-queue count of step changes no advance has
acted on yet, and partial indexes over the few live rows reconcile reads every pass."""
from django.db import migrations, models

# Queues that may still need an advance keep one pending change, so the first pass after the
# upgrade looks at them once, as the old "advance every active queue" pass did.
MARK_UNFINISHED = """
UPDATE queues_queue SET changes_pending = 0
WHERE status IN ('succeeded', 'failed', 'stopped')
  AND NOT EXISTS (
    SELECT 1 FROM queues_queuerequest s
    WHERE s.queue_id = queues_queue.id AND s.state NOT IN ('succeeded', 'failed', 'stopped', 'lost')
  )
"""


class Migration(migrations.Migration):
    dependencies = [("queues", "0007_override_image_permission")]

    operations = [
        migrations.AddField(
            model_name="queue",
            name="changes_pending",
            field=models.PositiveIntegerField(
                default=1,
                help_text="Step changes not yet acted on by queue_advance (a new queue needs its first advance). "
                "Reconcile advances only queues where this is above zero.",
            ),
        ),
        migrations.RunSQL(MARK_UNFINISHED, reverse_sql=migrations.RunSQL.noop),
        migrations.AddIndex(
            model_name="queue",
            index=models.Index(condition=models.Q(("changes_pending__gt", 0)), fields=["id"], name="queue_changes_pending"),
        ),
        migrations.AddIndex(
            model_name="queuerequest",
            index=models.Index(
                condition=models.Q(("state__in", ("launching", "pending", "running", "stopping"))),
                fields=["state"], name="step_launched_state",
            ),
        ),
        migrations.AddIndex(
            model_name="queuerequest",
            index=models.Index(
                condition=models.Q(("launched_at__isnull", False), ("logs", "")),
                fields=["finished_at"], name="step_logs_to_capture",
            ),
        ),
    ]
