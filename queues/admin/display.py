"""Small rendering helpers shared by the queue and step admin pages."""
from __future__ import annotations

from django.utils.html import format_html

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
