"""The console home page's figures: which queues are active now and how today's ended, by status.

Two indexed queries whatever the history (`status` for the active ones, `created_at` for today's),
each count a link to the queue list filtered alike — by status, and for today's by the list's own
"Today" date filter (the same bounds Django's DateFieldListFilter builds), so the list shows what was
counted.
"""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from queues.models import Queue, QueueStatus


def _counts(queues) -> dict[str, int]:
    return dict(queues.order_by().values_list("status").annotate(n=Count("id")))


def queue_summary() -> dict:
    """{"active": [(name, label, count, url)], "today": [...]} — names like `active_running`."""
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = today + timedelta(days=1)
    url = reverse("admin:queues_queue_changelist")
    active = _counts(Queue.objects.filter(status__in=QueueStatus.ACTIVE))
    ended = _counts(Queue.objects.filter(created_at__gte=today, created_at__lt=tomorrow))

    def rows(prefix, counts, statuses, extra):
        return [(f"{prefix}_{status}", QueueStatus(status).label.lower(), counts.get(status, 0),
                 f"{url}?{urlencode({'status__exact': status, **extra})}") for status in statuses]

    return {
        "active": rows("active", active, QueueStatus.ACTIVE, {}),
        "today": rows("today", ended, (*QueueStatus.ACTIVE, *QueueStatus.TERMINAL),
                      {"created_at__gte": str(today), "created_at__lt": str(tomorrow)}),
    }
