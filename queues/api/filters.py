"""Query filters for the queue list: status, symbol, target, created range."""
from __future__ import annotations

import django_filters

from queues import catalogue
from queues.models import Queue, QueueRequest, QueueStatus


class QueueFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=QueueStatus.choices, help_text="Repeat for several.")
    symbol = django_filters.CharFilter(method="filter_symbol", help_text="Exchange symbol, e.g. BTCUSDT.")
    target = django_filters.ChoiceFilter(
        choices=[(t, t) for t in catalogue.TARGETS],
        method="filter_target",
        help_text="Queues having at least one step of this target.",
    )
    created_after = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="ISO 8601 date-time (inclusive)."
    )
    created_before = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="ISO 8601 date-time (exclusive)."
    )

    class Meta:
        model = Queue
        fields = ["status", "symbol", "target", "created_after", "created_before"]

    def filter_symbol(self, queryset, name, value):
        return queryset.filter(symbol=value.strip().upper())

    def filter_target(self, queryset, name, value):
        # A subquery rather than a join, so the list's step counts are not multiplied.
        return queryset.filter(pk__in=QueueRequest.objects.filter(target=value).values("queue_id"))
