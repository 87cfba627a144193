"""The queue's audit trail (queues.history) on its page, in its live JSON and on the admin's History page,
and a step's earlier runs on the step page."""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from console.admin import display
from queues.history import AuditEntry, StepRun

PANEL_ROWS = 20  # the page shows the latest; the admin's History page shows them all
RESULT_CSS = {"accepted": "sf-met", "duplicate": "", "conflict": "sf-unmet", "rejected": "sf-unmet"}


def queue_audit(queue, *, limit: int | None = PANEL_ROWS) -> list[AuditEntry]:
    entries = AuditEntry.objects.filter(queue=queue).order_by("-at", "-pk")
    return list(entries[:limit] if limit else entries)


def audit_rows(entries) -> list[dict]:
    """The live JSON's `history`: newest first."""
    return [
        {
            "at": entry.at.isoformat(), "action": entry.action, "step": entry.step_name, "result": entry.result,
            "reason": entry.reason, "who": entry.who, "source": entry.source, "address": entry.address,
            "command_id": entry.command_id, "summary": entry.summary(),
        }
        for entry in entries
    ]


def audit_table(entries):
    if not entries:
        return "Nothing recorded yet."
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class='{}'>{}</td><td>{}</td></tr>",
        (
            (
                display.clock(e.at), e.get_action_display() + (f" {e.step_name}" if e.step_name else ""), e.who,
                e.source + (f" {e.address}" if e.address else ""), RESULT_CSS.get(e.result, ""), e.result, e.reason,
            )
            for e in entries
        ),
    )
    return format_html(
        '<table class="sf-history"><thead><tr><th>when</th><th>what</th><th>who</th><th>from</th><th>result</th>'
        "<th>reason</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


def step_runs_table(step):
    runs = list(StepRun.objects.filter(step=step).order_by("-run"))
    if not runs:
        return "None: this is the step's first run."
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
        (
            (
                r.run, display.badge(r.state), display.clock(r.started_at) or "—", display.clock(r.finished_at) or "—",
                display.duration(display.span(r.started_at, r.finished_at)), f"{r.records_written:,}", r.message,
                r.job_name,
            )
            for r in runs
        ),
    )
    return format_html(
        '<table class="sf-history"><thead><tr><th>run</th><th>ended</th><th>started</th><th>finished</th>'
        "<th>took</th><th>records</th><th>message</th><th>Job</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


@admin.register(AuditEntry)
class AuditEntryAdmin(display.ReadOnlyAdmin, admin.ModelAdmin):
    """Every recorded request, the refused starts too (they have no queue to show them on)."""

    list_display = ["at", "action", "queue_ref", "step_name", "result", "who", "source", "address", "reason"]
    list_filter = ["action", "result", "source"]
    search_fields = ["queue_ref", "who", "command_id", "step_name"]
    date_hierarchy = None
    show_full_result_count = False  # the trail grows with the history: no count(*) per page
