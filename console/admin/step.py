"""Read-only admin for steps (QueueRequest): what runs where, its progress, logs, events and dependencies."""
from __future__ import annotations

import json
import logging

from django.contrib import admin
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join, json_script

from console.admin import controls, display, history, logs
from queues.models import QueueRequest

logger = logging.getLogger(__name__)
RECENT_EVENTS = 50
CHART_EVENTS = 500


@admin.register(QueueRequest)
class QueueRequestAdmin(display.ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["name", "queue_link", "target", "type", "state_badge", "records_written", "job_name", "state_changed_at"]
    list_filter = ["state", "target", "streaming"]
    search_fields = ["name", "job_name", "telemetry_id", "queue__queue_id"]
    list_select_related = ["queue"]
    # What an operator needs first (state, progress, timing, logs) comes first; derived details last.
    fieldsets = [
        (None, {"fields": ["queue_link", "number", "name", "target", "type", "kind", "state_badge", "message"]}),
        ("Progress", {"fields": ["reported_status", "records_written", "extra", "launch_attempts"]}),
        ("Timing", {"fields": ["created_at", "launched_at", "started_at", "finished_at", "last_event_at", "state_changed_at", "run"]}),
        ("Logs", {"fields": ["logs_view"]}),
        ("Earlier runs", {"fields": ["earlier_runs"]}),
        ("Charts", {"fields": ["charts"]}),
        ("Dependencies", {"fields": ["waits_for", "waited_on_by"]}),
        ("Recent telemetry events", {"fields": ["recent_events"]}),
        ("Derived names", {"fields": ["job_name", "telemetry_id", "kafka_topic", "image"]}),
        ("Data", {"fields": ["interval", "collections_read", "collections_written", "inference_interval"]}),
        ("Request as submitted", {"fields": ["params_json"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "queue_link", "number", "name", "target", "type", "kind", "state_badge", "message", "job_name",
        "telemetry_id", "kafka_topic", "image", "interval", "collections_read", "collections_written",
        "inference_interval", "reported_status", "records_written", "extra", "launch_attempts", "created_at",
        "launched_at", "started_at", "finished_at", "last_event_at", "state_changed_at", "params_json",
        "logs_view", "charts", "waits_for", "waited_on_by", "recent_events", "run", "earlier_runs",
    ]  # fmt: skip

    @admin.display(description="queue", ordering="queue__queue_id")
    def queue_link(self, step: QueueRequest):
        url = reverse("admin:queues_queue_change", args=[step.queue_id])
        return format_html('<a href="{}">{}</a>', url, step.queue.queue_id)

    @admin.display(description="#")
    def number(self, step: QueueRequest) -> int:
        return step.number

    @admin.display(description="state", ordering="state")
    def state_badge(self, step: QueueRequest):
        return format_html('<span data-sf-step-state="{}">{}</span>', step.state, display.badge(step.state))

    @admin.display(description="kind")
    def kind(self, step: QueueRequest):
        return display.step_kind(step)

    @admin.display(description="reads")
    def collections_read(self, step: QueueRequest) -> str:
        return ", ".join(step.reads()) or "—"

    @admin.display(description="writes")
    def collections_written(self, step: QueueRequest) -> str:
        return ", ".join(step.writes()) or "—"

    @admin.display(description="logs")
    def logs_view(self, step: QueueRequest):
        from jobs.log_stream import step_log_since

        try:
            first = step_log_since(step, offset=0)
        except Exception as exc:  # the page must still open when the launcher is unreachable
            logger.exception("step logs unavailable", extra={"job_name": step.job_name})
            first = {"source": "none", "next": 0, "text": step.logs, "error": f"{type(exc).__name__}: {exc}"}
        error = format_html('<p class="errornote">Live logs unavailable: {}</p>', first["error"]) if first.get("error") else ""
        empty = "no logs yet" if not step.launched_at else "no logs were kept"
        return format_html(
            '{}<div class="sf-log-tools" id="sf-log-tools">'
            '<label><input type="checkbox" id="sf-log-follow" checked> follow (scroll to the end)</label>'
            '<button type="button" class="sf-button" id="sf-log-pause" aria-pressed="false">Pause</button>'
            '<input type="search" id="sf-log-search" placeholder="Search the log" aria-label="Search the log">'
            '<span id="sf-log-matches" class="sf-muted"></span>'
            '<a href="{}?download=1" id="sf-log-download" download>Download full log</a>'
            '<span id="sf-log-status" class="sf-muted" aria-live="polite">{}</span></div>'
            '<pre class="sf-logs" id="sf-logs" data-url="{}" data-next="{}" data-source="{}" data-ended="{}">{}</pre>',
            error, reverse("admin:queues_queuerequest_log", args=[step.pk]), _log_source(first["source"]),
            reverse("admin:queues_queuerequest_log", args=[step.pk]), first["next"], first["source"],
            "yes" if step.is_terminal else "no", first["text"] or empty,
        )  # fmt: skip

    @admin.display(description="charts")
    def charts(self, step: QueueRequest):
        """Records written over time and each numeric `extra` of the worker (per epoch when it reports one)."""
        events = list(step.events.order_by("-received_at", "-id").values("received_at", "sent_at", "records_written", "payload")[:CHART_EVENTS])
        records, series = [], {}
        for event in reversed(events):
            when = (event["sent_at"] or event["received_at"]).timestamp()
            if event["records_written"] is not None:
                records.append([when, event["records_written"]])
            extra = event["payload"].get("extra") if isinstance(event["payload"], dict) else None
            if not isinstance(extra, dict):
                continue
            epoch = extra.get("epoch")
            for key, value in extra.items():
                if key != "epoch" and _number(value):
                    axis = "epoch" if _number(epoch) else "time"
                    series.setdefault((key, axis), []).append([epoch if axis == "epoch" else when, value])
        charts = [{"title": "records written", "x": "time", "points": records}]
        charts += [{"title": key, "x": axis, "points": points} for (key, axis), points in series.items()]
        charts = [chart for chart in charts if len(chart["points"]) > 1]
        if not charts:
            return "Nothing to draw yet: charts appear once the step has reported progress twice."
        return format_html('<div id="sf-charts"></div>{}', json_script(charts, "sf-chart-data"))

    @admin.display(description="waits for")
    def waits_for(self, step: QueueRequest):
        edges = step.upstream_edges.select_related("upstream").order_by("upstream__position")
        return _edge_list(edges, lambda edge: edge.upstream, "when it is {}")

    @admin.display(description="ended runs (kept when a retry started the next)")
    def earlier_runs(self, step: QueueRequest):
        return history.step_runs_table(step)

    @admin.display(description="is waited on by")
    def waited_on_by(self, step: QueueRequest):
        edges = step.downstream_edges.select_related("upstream", "downstream").order_by("downstream__position")
        return _edge_list(edges, lambda edge: edge.downstream, "until this one is {}")

    @admin.display(description="last 50 events")
    def recent_events(self, step: QueueRequest):
        events = list(step.events.order_by("-received_at", "-id")[:RECENT_EVENTS])
        if not events:
            return "No telemetry received for this step yet."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    display.clock(event.received_at),
                    _status(event),
                    "" if event.records_written is None else f"{event.records_written:,}",
                    _extra(event.payload),
                    event.message,
                    event.source,
                )
                for event in events
            ),
        )
        return format_html(
            '<table class="sf-events"><thead><tr><th>received</th><th>status</th><th>records</th><th>extra</th>'
            "<th>message</th><th>via</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        stop = self.admin_site.admin_view(controls.step_stop_view(self))
        log = self.admin_site.admin_view(logs.step_log_view(self))
        return [
            path("<path:object_id>/stop/", stop, name="%s_%s_stop" % info),
            path("<path:object_id>/log/", log, name="%s_%s_log" % info),
        ] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        step = QueueRequest.objects.filter(pk=object_id).select_related("queue").first() if str(object_id).isdigit() else None
        extra = {
            "step": step,
            "can_stop": controls.may_stop(request.user),
            "step_can_stop": bool(step and controls.step_can_stop(step)),
            # Without scripts, reload the page while the step runs (with them, the log streams instead).
            "refresh_seconds": 5 if step and not step.is_terminal and step.launched_at else None,
        }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    @admin.display(description="request")
    def params_json(self, step: QueueRequest):
        return format_html("<pre style='margin:0'>{}</pre>", json.dumps(step.params, indent=2))


def _edge_list(edges, other_of, wording: str):
    edges = list(edges)
    if not edges:
        return "None"
    items = (
        (
            reverse("admin:queues_queuerequest_change", args=[other_of(edge).pk]),
            other_of(edge).name,
            display.badge(other_of(edge).state),
            wording.format("running" if edge.kind == "ready" else "succeeded"),
            "✔ met" if edge.is_met else "✘ not met",
            "sf-met" if edge.is_met else "sf-unmet",
            edge.reason,
        )
        for edge in edges
    )
    return format_html(
        "<div class='sf-edges'>{}</div>",
        format_html_join(
            "", '<div><a href="{}">{}</a> {} — {}: <strong class="{}">{}</strong> <small>({})</small></div>',
            ((url, name, badge, words, css, met, reason) for url, name, badge, words, met, css, reason in items),
        ),
    )  # fmt: skip


def _log_source(source: str) -> str:
    return {"file": "live from the launcher", "window": "live from the launcher (recent part)",
            "stored": "kept when the step ended", "none": ""}.get(source, source)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _extra(payload) -> str:
    extra = payload.get("extra") if isinstance(payload, dict) else None
    if not isinstance(extra, dict):
        return ""
    return ", ".join(f"{key}={value}" for key, value in extra.items())


def _status(event) -> str:
    """A coalesced row (plain progress reports of one batch, jobs.telemetry_coalesce) says how many."""
    if event.coalesced > 1:
        return f"{event.status} ({event.coalesced} progress reports)"
    return event.status
