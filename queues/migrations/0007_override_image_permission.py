"""The permission to run steps with an image from outside ALLOWED_IMAGE_REGISTRIES (issue #10 §5)."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("queues", "0006_telemetry_run")]

    operations = [
        migrations.AlterModelOptions(
            name="queue",
            options={
                "ordering": ["-created_at"],
                "permissions": [
                    ("start_queue", "Can start queues"),
                    ("stop_queue", "Can stop queues and steps"),
                    ("override_image", "Can run steps with an image from any registry"),
                ],
            },
        ),
    ]
