"""Telemetry rows cost less to write (issue #12, ingestion): two per-row costs every event paid go.

- The foreign keys from events to queue and step were checked by PostgreSQL with one trigger query
  each, per stored row, at commit (about a fifth of a batch's time). Ingestion resolves both under
  the queue's row lock in the same transaction, and Django still deletes a queue's events with it
  (on_delete is applied by the ORM), so the columns stay plain references without a database check.
- The `varchar_pattern_ops` index Django adds beside a unique CharField serves LIKE 'prefix%' only;
  nothing searches event keys by prefix, and it was one more index entry per event.
"""
import django.db.models.deletion
from django.db import migrations, models

LIKE_INDEX = "queues_telemetryevent_event_key_b7f82784_like"


class Migration(migrations.Migration):
    dependencies = [("queues", "0010_queue_list_indexes")]

    operations = [
        migrations.AlterField(
            model_name="telemetryevent",
            name="queue",
            field=models.ForeignKey(
                db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE,
                related_name="events", to="queues.queue",
            ),
        ),
        migrations.AlterField(
            model_name="telemetryevent",
            name="step",
            field=models.ForeignKey(
                blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.CASCADE,
                related_name="events", to="queues.queuerequest",
            ),
        ),
        migrations.RunSQL(
            f"DROP INDEX IF EXISTS {LIKE_INDEX}",
            f"CREATE INDEX IF NOT EXISTS {LIKE_INDEX} ON queues_telemetryevent (event_key varchar_pattern_ops)",
        ),
    ]
