"""Small rendering helpers shared by the queue and step admin pages."""
from __future__ import annotations

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

# Colours by meaning: grey not started, blue in flight, green done, red failed, amber stopping/stopped.
_COLOURS = {
    "pending": "#6c757d",
    "waiting": "#6c757d",
    "launching": "#0d6efd",
    "running": "#0d6efd",
    "stopping": "#d97706",
    "stopped": "#92400e",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "lost": "#dc3545",
}


def badge(value: str, label: str | None = None):
    colour = _COLOURS.get(value, "#6c757d")
    return format_html(
        '<span class="sf-badge" style="background:{};color:#fff;border-radius:10px;padding:2px 9px;'
        'font-size:11px;font-weight:600;white-space:nowrap">{}</span>',
        colour,
        label or value,
    )


def progress(done: int, total: int):
    percent = int(100 * done / total) if total else 0
    return format_html(
        '<span title="{}% of steps succeeded" style="white-space:nowrap">{}/{} done '
        '<span style="display:inline-block;width:60px;height:7px;background:#e5e7eb;border-radius:4px;'
        'vertical-align:middle"><span style="display:block;width:{}%;height:7px;background:#198754;'
        'border-radius:4px"></span></span></span>',
        percent,
        done,
        total,
        percent,
    )


# --- Step cells: rendered once here for both the page and its live JSON, so a refresh looks identical. ---


def clock(value):
    if value is None:
        return None
    local = timezone.localtime(value)
    return format_html('<span title="{}">{}</span>', local.isoformat(timespec="seconds"), local.strftime("%H:%M:%S"))


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def step_times(step):
    parts = [(label, clock(getattr(step, field))) for label, field in
             (("launched", "launched_at"), ("started", "started_at"), ("finished", "finished_at"))]
    parts = [(label, clock) for label, clock in parts if clock is not None]
    if not parts:
        return mark_safe('<span class="sf-muted">not launched</span>')
    lines = format_html_join(mark_safe("<br>"), "{} {}", parts)
    begin = step.started_at or step.launched_at
    if begin is None:
        return lines
    took = _duration(((step.finished_at or timezone.now()) - begin).total_seconds())
    return format_html('{}<br><span class="sf-muted">{} {}</span>', lines, "took" if step.finished_at else "for", took)


def step_progress(step):
    """Records written, the worker's last reported status and its `extra` (epoch, loss, ...)."""
    extra = step.extra if isinstance(step.extra, dict) else {}
    extras = format_html_join(" · ", "{}&nbsp;{}", ((key, _short(value)) for key, value in extra.items()))
    return format_html(
        '<strong>{}</strong> records<br><span class="sf-muted">{}</span>{}',
        f"{step.records_written:,}",
        step.reported_status or "no report yet",
        format_html("<br>{}", extras) if extra else "",
    )


def step_message(step):
    if not step.message:
        return mark_safe('<span class="sf-muted">—</span>')
    return format_html('<span class="sf-message">{}</span>', step.message)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


STEP_CELLS = {"state": lambda step: badge(step.state), "progress": step_progress, "message": step_message, "times": step_times}


def step_cell(step, name: str):
    """A cell the queue page's script can find and replace in place."""
    return format_html('<div data-sf-step="{}" data-sf-cell="{}">{}</div>', step.pk, name, STEP_CELLS[name](step))
