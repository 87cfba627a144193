"""When a launching step's next attempt is due: reconcile re-sends a launch only after it, so a
stuck-launch re-send never starts a second retry chain beside one still backing off."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("queues", "0003_step_fillfactor")]

    operations = [
        migrations.AddField(
            model_name="queuerequest",
            name="next_launch_at",
            field=models.DateTimeField(
                blank=True, null=True,
                help_text="While launching: when the next attempt is due; reconcile re-sends the launch only after it.",
            ),
        ),
        migrations.AlterField(
            model_name="queuerequest",
            name="launch_attempts",
            field=models.PositiveIntegerField(default=0, help_text="Launch attempts of this run (bounded budget)."),
        ),
    ]
