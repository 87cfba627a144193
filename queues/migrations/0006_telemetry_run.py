"""The run a telemetry event belongs to: a retried step's new run does not take the old run's events."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("queues", "0005_step_launch_deadline")]

    operations = [
        migrations.AddField(
            model_name="telemetryevent",
            name="run",
            field=models.PositiveIntegerField(
                blank=True, null=True,
                help_text="The step's run it belongs to (sent by the worker, else the run current on arrival).",
            ),
        ),
    ]
