"""Indexes for the queue lists' orders and filters (issue #12): newest first, overall and per status or symbol."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0009_audit_history"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="queue",
            index=models.Index(fields=["created_at", "id"], name="queue_list_order"),
        ),
        migrations.AddIndex(
            model_name="queue",
            index=models.Index(fields=["status", "created_at", "id"], name="queue_list_by_status"),
        ),
        migrations.AddIndex(
            model_name="queue",
            index=models.Index(fields=["symbol", "created_at", "id"], name="queue_list_by_symbol"),
        ),
    ]
