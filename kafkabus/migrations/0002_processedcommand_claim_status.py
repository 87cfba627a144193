"""A command_id is claimed (`processing`) before its command acts (kafkabus.claims)."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("kafkabus", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="processedcommand",
            name="status",
            field=models.CharField(help_text="processing (claimed, acting), accepted or rejected", max_length=16),
        ),
    ]
