"""Leave room in step pages: progress updates (many per second at high telemetry rates) then stay
HOT updates — written on the same page without touching the table's indexes."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("queues", "0002_telemetry_fewer_indexes")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE queues_queuerequest SET (fillfactor = 50)",
            reverse_sql="ALTER TABLE queues_queuerequest RESET (fillfactor)",
        ),
    ]
