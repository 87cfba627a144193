"""Read-only admin for steps (QueueRequest): what runs where, its derived names and its progress."""
from __future__ import annotations

import json

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from queues.admin import display
from queues.models import QueueRequest


@admin.register(QueueRequest)
class QueueRequestAdmin(admin.ModelAdmin):
    list_display = ["name", "queue_link", "target", "type", "state_badge", "records_written", "job_name", "state_changed_at"]
    list_filter = ["state", "target", "streaming"]
    search_fields = ["name", "job_name", "telemetry_id", "queue__queue_id"]
    list_select_related = ["queue"]
    fieldsets = [
        (None, {"fields": ["queue_link", "number", "name", "target", "type", "streaming", "state_badge", "message"]}),
        ("Derived names", {"fields": ["job_name", "telemetry_id", "kafka_topic", "image"]}),
        ("Data", {"fields": ["interval", "collections_read", "collections_written", "inference_interval"]}),
        ("Progress", {"fields": ["reported_status", "records_written", "extra", "launch_attempts"]}),
        ("Timing", {"fields": ["created_at", "launched_at", "started_at", "finished_at", "last_event_at", "state_changed_at"]}),
        ("Request as submitted", {"fields": ["params_json"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "queue_link", "number", "name", "target", "type", "streaming", "state_badge", "message", "job_name",
        "telemetry_id", "kafka_topic", "image", "interval", "collections_read", "collections_written",
        "inference_interval", "reported_status", "records_written", "extra", "launch_attempts", "created_at",
        "launched_at", "started_at", "finished_at", "last_event_at", "state_changed_at", "params_json",
    ]  # fmt: skip

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="queue", ordering="queue__queue_id")
    def queue_link(self, step: QueueRequest):
        url = reverse("admin:queues_queue_change", args=[step.queue_id])
        return format_html('<a href="{}">{}</a>', url, step.queue.queue_id)

    @admin.display(description="#")
    def number(self, step: QueueRequest) -> int:
        return step.number

    @admin.display(description="state", ordering="state")
    def state_badge(self, step: QueueRequest):
        return display.badge(step.state)

    @admin.display(description="reads")
    def collections_read(self, step: QueueRequest) -> str:
        return ", ".join(step.reads()) or "—"

    @admin.display(description="writes")
    def collections_written(self, step: QueueRequest) -> str:
        return ", ".join(step.writes()) or "—"

    @admin.display(description="request")
    def params_json(self, step: QueueRequest):
        return format_html("<pre style='margin:0'>{}</pre>", json.dumps(step.params, indent=2))
