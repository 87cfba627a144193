"""Small rendering helpers shared by the queue and step admin pages and their live JSON.

Styles live in console/static/console/console.css (classes, CSS variables of the admin's light and dark themes).
"""
from __future__ import annotations

import functools

from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from console.admin.progress import QueueCounts


class ReadOnlyAdmin:
    """Shown, never edited in the admin: rows change only through the services (start, stop, retry)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

# Colours by meaning: grey not started, blue in flight, green done, red failed, amber stopping/stopped.
COLOURS = {
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
    return format_html(
        '<span class="sf-badge" style="background:{}">{}</span>', COLOURS.get(value, "#6c757d"), label or value
    )


def when(value) -> str:
    """The one time format of the console (FORMAT_MODULE_PATH): date, seconds and time zone.

    The same text as Django's `date_format`, through `strftime` when the format has only the fields
    below: Django's formatter parses the format for every value, which the lists pay once per row.
    """
    if value is None:
        return ""
    local = timezone.localtime(value)
    pattern = _strftime_pattern(formats.get_format("DATETIME_FORMAT"))
    if pattern is None or local.year < 1000:  # Django pads years to four digits, strftime may not
        return formats.date_format(local, "DATETIME_FORMAT")
    return local.strftime(pattern)


# Django date-format characters with a strftime equivalent giving the same text (T: the zone's name).
_STRFTIME = {"Y": "%Y", "m": "%m", "d": "%d", "H": "%H", "i": "%M", "s": "%S", "T": "%Z"}


@functools.lru_cache(maxsize=8)
def _strftime_pattern(django_format: str) -> str | None:
    parts = []
    for char in django_format:
        if char in _STRFTIME:
            parts.append(_STRFTIME[char])
        elif char.isalpha() or char == "\\":
            return None  # a field without an exact equivalent here: Django formats it
        else:
            parts.append(char.replace("%", "%%"))
    return "".join(parts)


def clock(value):
    if value is None:
        return None
    return format_html('<time datetime="{}">{}</time>', value.isoformat(), when(value))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def span(begin, end) -> float | None:
    """Seconds from begin to end (or to now while it lasts)."""
    if begin is None:
        return None
    return ((end or timezone.now()) - begin).total_seconds()


def bar(parts, title: str):
    """A bar of coloured segments [(css class, percent)]; its empty track reads as empty in both themes."""
    segments = format_html_join("", '<span class="sf-bar-seg {}" style="width:{}%"></span>', parts)
    return format_html('<span class="sf-bar" role="img" aria-label="{}" title="{}">{}</span>', title, title, segments)


def queue_progress(counts: QueueCounts):
    """E.g. "7 running · 0 failed · 2/9 succeeded" (then "· N stopped", "· N waiting" when there are
    any): running streaming steps read as healthy, not as 0 %."""
    total = counts.total or 1
    parts = [
        ("sf-succeeded", round(100 * counts.succeeded / total, 2)),
        ("sf-running", round(100 * counts.running / total, 2)),
        ("sf-failed", round(100 * counts.failed / total, 2)),
        ("sf-stopped", round(100 * counts.stopped / total, 2)),
    ]
    title = (f"{counts.succeeded} succeeded, {counts.running} running, {counts.waiting} waiting, "
             f"{counts.failed} failed, {counts.stopped} stopped of {counts.total}")
    failed = format_html('<span class="{}">{} failed</span>', "sf-text-failed" if counts.failed else "", counts.failed)
    return format_html(
        '<span class="sf-progress">{} <span class="sf-progress-text">{} running · {} · {}/{} succeeded{}{}</span></span>',
        bar([p for p in parts if p[1]], title), counts.running, failed, counts.succeeded, counts.total,
        f" · {counts.stopped} stopped" if counts.stopped else "",
        f" · {counts.waiting} waiting" if counts.waiting else "",
    )  # fmt: skip


# --- Step cells: rendered once here for both the page and its live JSON, so a refresh looks identical. ---


def step_times(step):
    parts = [(label, clock(getattr(step, field))) for label, field in
             (("launched", "launched_at"), ("started", "started_at"), ("finished", "finished_at"))]
    parts = [(label, value) for label, value in parts if value is not None]
    if not parts:
        return mark_safe('<span class="sf-muted">not launched</span>')
    lines = format_html_join(mark_safe("<br>"), "{} {}", parts)
    begin = step.started_at or step.launched_at
    if begin is None:
        return lines
    took = duration(span(begin, step.finished_at))
    return format_html('{}<br><span class="sf-muted">{} {}</span>', lines, "took" if step.finished_at else "for", took)


def step_state(step, info: dict | None = None):
    """The state badge, and for a waiting step what it waits for."""
    waiting_for = (info or {}).get("waiting_for") or []
    if step.state != "waiting" or not waiting_for:
        return badge(step.state)
    return format_html(
        '{}<br><span class="sf-muted sf-waits">waits for {}</span>', badge(step.state),
        format_html_join(", ", "<strong>{}</strong> {}", ((name, words) for name, words in waiting_for)),
    )


def step_progress(step, info: dict | None = None):
    """A bar (the fraction when known, a running stripe for a live step without an end), records and `extra`."""
    fraction = (info or {}).get("fraction")
    extra = step.extra if isinstance(step.extra, dict) else {}
    extras = format_html_join(" · ", "{}&nbsp;{}", ((key, _short(value)) for key, value in extra.items()))
    if fraction is not None:
        css = "sf-succeeded" if step.state == "succeeded" else "sf-failed" if step.state in ("failed", "lost") else "sf-running"
        shown, label = bar([(css, round(100 * fraction, 2))], f"{fraction:.0%} done"), f" · {fraction:.0%}"
    elif step.state in ("running", "stopping") or (step.streaming and step.state == "pending"):
        shown, label = mark_safe('<span class="sf-bar sf-bar-live" title="running (no end to measure)"></span>'), ""
    else:
        shown, label = bar([], "not measurable yet"), ""
    return format_html(
        '{}<br><strong>{}</strong> records{}<br><span class="sf-muted">{}</span>{}',
        shown,
        f"{step.records_written:,}",
        label,
        step.reported_status or "no report yet",
        format_html("<br>{}", extras) if extra else "",
    )


def step_message(step):
    if not step.message:
        return mark_safe('<span class="sf-muted">—</span>')
    return format_html('<span class="sf-message">{}</span>', step.message)


def step_kind(step):
    # Streaming is a kind of step, not a fault: a neutral tag, never a red cross.
    return format_html('<span class="sf-tag">{}</span>', "streaming" if step.streaming else "batch")


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


STEP_CELLS = {
    "state": step_state,
    "progress": step_progress,
    "message": lambda step, info=None: step_message(step),
    "times": lambda step, info=None: step_times(step),
}


def step_cell(step, name: str, info: dict | None = None):
    """A cell the queue page's script can find and replace in place (info: see console.admin.live.step_info)."""
    return format_html('<div data-sf-step="{}" data-sf-cell="{}">{}</div>', step.pk, name, STEP_CELLS[name](step, info))


def met(value: bool):
    return format_html('<span class="{}">{}</span>', "sf-met" if value else "sf-unmet", "✔ met" if value else "… not yet")
