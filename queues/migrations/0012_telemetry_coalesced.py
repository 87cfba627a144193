"""Plain progress reports coalesced per step per batch (issue #12, ingestion): a row says how many
reports it stands for. Existing rows are one event each; the database default keeps it so for any
writer that does not name the column."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("queues", "0011_telemetry_cheaper_rows")]

    operations = [
        migrations.AddField(
            model_name="telemetryevent",
            name="coalesced",
            field=models.PositiveIntegerField(
                db_default=1, default=1,
                help_text="How many progress reports of one step in one batch this row stands for.",
            ),
        ),
    ]
