"""The operators' console for queues: list, read-only detail with steps and edges, stop, start."""
from __future__ import annotations

import json

from django.contrib import admin, messages
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from jobs import services
from console.admin import bulk, controls, display, history, listing, live
from console.admin.start import start_queue_view
from queues.history import Origin
from queues.models import Queue, QueueRequest, StepDependency
from queues.permissions import START_QUEUE, STOP_QUEUE, VIEW_QUEUE


class ReadOnlyInline(display.ReadOnlyAdmin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request, obj=None) -> bool:
        # Steps and edges are part of the queue: whoever may view the queue sees them.
        return request.user.has_perm(VIEW_QUEUE)


class PageRows(BaseInlineFormSet):
    """An inline's rows from the queue page's one read (QueueAdmin.page_view), not from a query of its own."""

    def get_queryset(self):
        return self.rows(self.instance.console_view)


class StepRows(PageRows):
    @staticmethod
    def rows(view: live.QueueView) -> list[QueueRequest]:
        return view.steps  # in the order they run


class EdgeRows(PageRows):
    @staticmethod
    def rows(view: live.QueueView) -> list[StepDependency]:
        # StepDependency's ordering, as the query gave it: by the downstream, then the upstream step.
        return sorted(view.edges, key=lambda edge: (edge.downstream.position, edge.upstream.position))


class StepInline(ReadOnlyInline):
    model = QueueRequest
    formset = StepRows
    verbose_name_plural = "steps (in the order they run)"
    fields = ["number", "step", "state_cell", "progress_cell", "message_cell", "times_cell", "job_name", "stop_button"]
    readonly_fields = fields

    def _cell(self, step: QueueRequest, name: str):
        return display.step_cell(step, name, step.queue.console_view.info.get(step.pk))

    @admin.display(description="#")
    def number(self, step: QueueRequest) -> int:
        return step.number

    @admin.display(description="step")
    def step(self, step: QueueRequest):
        url = reverse("admin:queues_queuerequest_change", args=[step.pk])
        return format_html(
            '<a href="{}" title="Logs, events and dependencies of this step"><strong>{}</strong></a><br>'
            '<small>{} · {} · {}{}</small>',
            url, step.name, step.target, step.type, display.step_kind(step), f" · run {step.run}" if step.run > 1 else "",
        )  # fmt: skip

    @admin.display(description="state")
    def state_cell(self, step: QueueRequest):
        return self._cell(step, "state")

    @admin.display(description="progress")
    def progress_cell(self, step: QueueRequest):
        return self._cell(step, "progress")

    @admin.display(description="last message")
    def message_cell(self, step: QueueRequest):
        return self._cell(step, "message")

    @admin.display(description="times")
    def times_cell(self, step: QueueRequest):
        return self._cell(step, "times")

    @admin.display(description="")
    def stop_button(self, step: QueueRequest):
        # The buttons submit one shared form outside the queue's own <form> (forms cannot nest).
        return format_html(
            '<button type="submit" form="sf-step-stop-form" formaction="{}" class="sf-button sf-danger" '
            'data-sf-stop-step="{}" {} onclick="return confirm({});">Stop step</button>',
            reverse("admin:queues_queuerequest_stop", args=[step.pk]),
            step.pk,
            "" if controls.step_can_stop(step) else "hidden",
            json.dumps(f"Stop step {step.name}? A waiting step is cancelled, a running one stopped."),
        )

    def get_fields(self, request, obj=None):
        # Only those who may stop see the per-step stop column.
        fields = super().get_fields(request, obj)
        return fields if controls.may_stop(request.user) else [f for f in fields if f != "stop_button"]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)


class EdgeInline(ReadOnlyInline):
    model = StepDependency
    fk_name = "queue"
    verbose_name = "dependency"
    verbose_name_plural = "dependencies (the downstream step waits for the upstream step)"
    formset = EdgeRows
    fields = ["downstream_name", "waits_for", "upstream_name", "reason", "met"]
    readonly_fields = fields

    @admin.display(description="downstream step")
    def downstream_name(self, edge: StepDependency) -> str:
        return edge.downstream.name

    @admin.display(description="waits until")
    def waits_for(self, edge: StepDependency):
        return format_html("<strong>{}</strong> {}", edge.upstream.name, "is ready" if edge.kind == "ready" else "has succeeded")

    @admin.display(description="upstream step")
    def upstream_name(self, edge: StepDependency) -> str:
        return edge.upstream.name

    @admin.display(description="met")
    def met(self, edge: StepDependency):
        return format_html('<span data-sf-edge="{}-{}">{}</span>', edge.upstream_id, edge.downstream_id,
                           display.met(live.edge_met(edge, edge.upstream, edge.downstream)))


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    list_display = [
        "queue_id", "status_badge", "step_progress", "duration", "last_message", "data", "created_at", "submitted",
    ]  # fmt: skip
    # At a year of history, no filter may read every queue: listing.py's filters and paginator, no
    # date_hierarchy (its links are a SELECT DISTINCT over the history; the created_at filter stays).
    list_filter = ["status", listing.SymbolFilter, listing.SourceFilter, "created_at"]
    search_fields = ["queue_id", "symbol"]
    list_per_page = 50
    paginator = listing.QueuePaginator
    show_full_result_count = False
    actions = ["stop_selected", "retry_selected"]
    inlines = [StepInline, EdgeInline]
    fieldsets = [
        (None, {"fields": ["queue_id", "status_badge", "step_progress", "duration", "symbol", "time_range", "queue_message"]}),
        ("Submitted", {"fields": ["source", "submitted_by", "created_at", "started_cell", "finished_cell", "stop_requested_cell"]}),
        ("Warnings", {"fields": ["warnings_list"]}),
        ("Payload", {"fields": ["payload_json"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "queue_id", "status_badge", "step_progress", "duration", "symbol", "time_range", "queue_message", "source",
        "submitted_by", "created_at", "started_cell", "finished_cell", "stop_requested_cell", "warnings_list",
        "payload_json",
    ]  # fmt: skip

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("submitted_by")

    def get_changelist(self, request, **kwargs):
        return listing.QueueChangeList

    # Queues are created only through the start page or the API, and their data is derived.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting an active queue would orphan its Jobs: stop it first.
        if obj is not None and obj.is_active:
            return False
        return super().has_delete_permission(request, obj)

    def has_start_permission(self, request) -> bool:
        return request.user.has_perm(START_QUEUE)

    def has_stop_permission(self, request) -> bool:
        return request.user.has_perm(STOP_QUEUE)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk delete would also take active queues
        return actions

    def has_retry_permission(self, request) -> bool:
        return controls.may_retry(request.user)

    @admin.display(description="status", ordering="status")
    def status_badge(self, queue: Queue):
        return format_html('<span data-sf-queue-cell="status">{}</span>', display.badge(queue.status))

    @admin.display(description="steps")
    def step_progress(self, queue: Queue):
        return format_html('<span data-sf-queue-cell="progress">{}</span>', display.queue_progress(queue.step_counts))

    @admin.display(description="duration")
    def duration(self, queue: Queue):
        took = display.duration(display.span(queue.started_at or queue.created_at, queue.finished_at))
        return format_html('<span data-sf-queue-cell="duration">{}</span>', took)

    @admin.display(description="last message")
    def last_message(self, queue: Queue):
        text = queue.message or queue.last_failure
        return format_html('<span class="sf-list-message" title="{}">{}</span>', text, text or "—")

    @admin.display(description="message")
    def queue_message(self, queue: Queue):
        return format_html('<span data-sf-queue-cell="message">{}</span>', queue.message or queue.last_failure or "—")

    @admin.display(description="started at")
    def started_cell(self, queue: Queue):
        return format_html('<span data-sf-queue-cell="started_at">{}</span>', display.when(queue.started_at) or "—")

    @admin.display(description="finished at")
    def finished_cell(self, queue: Queue):
        return format_html('<span data-sf-queue-cell="finished_at">{}</span>', display.when(queue.finished_at) or "—")

    @admin.display(description="stop requested at")
    def stop_requested_cell(self, queue: Queue):
        value = display.when(queue.stop_requested_at) or "—"
        return format_html('<span data-sf-queue-cell="stop_requested_at">{}</span>', value)

    @admin.display(description="data", ordering="symbol")
    def data(self, queue: Queue):
        return format_html("{}<br><small class='sf-muted'>{}</small>", queue.symbol, self.time_range(queue))

    @admin.display(description="submitted", ordering="source")
    def submitted(self, queue: Queue):
        return format_html("{}<br><small class='sf-muted'>via {}</small>", queue.submitted_by or "—", queue.source)

    @admin.display(description="time range")
    def time_range(self, queue: Queue) -> str:
        return queue.time_range or "— (streaming)"

    @admin.display(description="warnings")
    def warnings_list(self, queue: Queue):
        if not queue.warnings:
            return "None"
        return format_html("<ul style='margin:0'>{}</ul>", format_html_join("", "<li>{}</li>", ((w,) for w in queue.warnings)))

    @admin.display(description="payload as submitted")
    def payload_json(self, queue: Queue):
        return format_html("<pre style='margin:0'>{}</pre>", json.dumps(queue.payload, indent=2))

    @admin.action(description="Stop selected queues…", permissions=["stop"])
    def stop_selected(self, request, queryset):
        return bulk.stop_selected(self, request, queryset)

    @admin.action(description="Retry failed/stopped steps of selected queues…", permissions=["retry"])
    def retry_selected(self, request, queryset):
        return bulk.retry_selected(self, request, queryset)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("start/", view(start_queue_view(self)), name="%s_%s_start" % info),
            path("<path:object_id>/stop/", view(self.stop_one_view), name="%s_%s_stop" % info),
            path("<path:object_id>/retry/", view(controls.queue_retry_view(self)), name="%s_%s_retry" % info),
            path("<path:object_id>/live/", view(controls.queue_live_view(self)), name="%s_%s_live" % info),
        ] + super().get_urls()

    def stop_one_view(self, request, object_id):
        return require_POST(self._stop_one)(request, object_id)

    def _stop_one(self, request, object_id):
        queue = get_object_or_404(Queue, pk=object_id)
        if not self.has_stop_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        services.queue_stop(queue=queue, origin=Origin.http(request, source="admin"))
        self.message_user(request, f"Stop requested for {queue.queue_id}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:queues_queue_change", args=[queue.pk]))

    def changelist_view(self, request, extra_context=None):
        extra = {"can_start": self.has_start_permission(request)}
        return super().changelist_view(request, {**extra, **(extra_context or {})})

    def page_view(self, request, object_id) -> live.QueueView | None:
        """The queue with its steps and edges, read once for its page: the fields, the buttons and both
        inlines draw from it (issue #12: each read them again, 18 queries where 5 do)."""
        queue = self.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
        if queue is None:
            return None
        view = queue.console_view = live.QueueView.load(queue)
        # What the list attaches per page (listing.attach_step_figures), from the steps read here.
        queue.step_counts, queue.last_failure = view.counts, view.last_failure()
        request.console_queue = queue
        return view

    def get_object(self, request, object_id, from_field=None):
        queue = getattr(request, "console_queue", None)
        if from_field is None and queue is not None and str(queue.pk) == str(object_id):
            return queue
        return super().get_object(request, object_id, from_field)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        view = self.page_view(request, object_id)
        queue = view.queue if view else None
        extra = {
            "can_stop": self.has_stop_permission(request),
            "can_retry": self.has_retry_permission(request),
            "has_retryable_steps": bool(view and live.queue_can_retry(queue, view.steps)),
            "live_url": reverse("admin:queues_queue_live", args=[object_id]) if queue else None,
            "manifests_url": _manifests_url(queue),
            "TIME_ZONE": timezone.get_current_timezone_name(),
            "history_html": history.audit_table(history.queue_audit(queue)) if queue else "",
        }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def history_view(self, request, object_id, extra_context=None):
        # The audit trail (queues.history) is this object's history: LogEntry has no row for a Kafka command.
        queue = Queue.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        extra = {"audit_entries": history.queue_audit(queue, limit=None) if queue else []}
        return super().history_view(request, object_id, {**extra, **(extra_context or {})})


def _manifests_url(queue: Queue | None) -> str | None:
    # The Kubernetes dry-run page belongs to the jobs app; the queue page works without it.
    if queue is None:
        return None
    try:
        return reverse("admin-queue-manifests", kwargs={"queue_id": queue.queue_id})
    except NoReverseMatch:
        return None
