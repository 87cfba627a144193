"""Audit entries (who started, stopped or retried what, from where, with what result) and the ends of
a step's earlier runs (issue #15 §7)."""
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0008_reconcile_work_lists"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditEntry",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("queue_ref", models.CharField(blank=True, help_text="The queue_id as requested (kept for rejections).", max_length=200)),
                ("step_name", models.CharField(blank=True, max_length=50)),
                ("action", models.CharField(choices=[("start", "start"), ("stop", "stop"), ("retry", "retry"), ("step_stop", "step stop")], max_length=16)),
                ("result", models.CharField(choices=[("accepted", "Accepted"), ("duplicate", "Duplicate"), ("conflict", "Conflict"), ("rejected", "Rejected")], max_length=16)),
                ("reason", models.TextField(blank=True)),
                ("source", models.CharField(help_text="api, admin, kafka or system", max_length=16)),
                ("who", models.CharField(help_text="The username, or the Kafka command's id.", max_length=250)),
                ("address", models.CharField(blank=True, help_text="The HTTP client's address.", max_length=64)),
                ("command_id", models.CharField(blank=True, max_length=200)),
                ("detail", models.JSONField(blank=True, default=dict, help_text="E.g. the steps retried.")),
                ("at", models.DateTimeField(default=django.utils.timezone.now)),
                ("queue", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="audit", to="queues.queue")),
                ("user", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "verbose_name_plural": "audit entries",
                "ordering": ["-at", "-pk"],
                "indexes": [models.Index(fields=["queue", "-at"], name="audit_queue_at")],
            },
        ),
        migrations.CreateModel(
            name="StepRun",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("run", models.PositiveIntegerField()),
                ("state", models.CharField(max_length=16)),
                ("reported_status", models.CharField(blank=True, max_length=32)),
                ("records_written", models.BigIntegerField(default=0)),
                ("message", models.TextField(blank=True)),
                ("job_name", models.CharField(blank=True, max_length=63)),
                ("launch_attempts", models.PositiveIntegerField(default=0)),
                ("launched_at", models.DateTimeField(blank=True, null=True)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("extra", models.JSONField(blank=True, default=dict)),
                ("logs", models.TextField(blank=True, help_text="The tail of the run's logs, if it was kept.")),
                ("retried_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("step", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="past_runs", to="queues.queuerequest")),
            ],
            options={
                "ordering": ["step", "-run"],
                "constraints": [models.UniqueConstraint(fields=("step", "run"), name="unique_step_run")],
            },
        ),
    ]
