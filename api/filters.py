"""Query filters for the queue list: status, symbol, target, created range."""
from __future__ import annotations

from datetime import timezone

import django_filters
from django_filters.rest_framework import DjangoFilterBackend
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

from queues import catalogue
from queues.models import Queue, QueueRequest, QueueStatus, TelemetryEvent


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, handed on in UTC.

    A valid offset can still push the value past Python's datetime range when converted (an
    OverflowError, i.e. a 500), and PostgreSQL refuses offsets beyond ±15:59 that Python accepts;
    converting here makes both a 400 on the field.
    """

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(timezone.utc)
        except OverflowError:
            raise ValidationError("Out of range once converted to UTC.", code="invalid") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


_FORM_CLASSES: dict[type, type] = {}


class QueueFilter(django_filters.FilterSet):
    # distinct=False: a column of the queue itself cannot repeat rows, and DISTINCT over the rows' JSON
    # columns made PostgreSQL hash every matching queue before LIMIT.
    status = django_filters.MultipleChoiceFilter(
        choices=QueueStatus.choices, distinct=False, help_text="Repeat for several."
    )
    symbol = django_filters.CharFilter(method="filter_symbol", help_text="Exchange symbol, e.g. BTCUSDT.")
    target = django_filters.ChoiceFilter(
        choices=[(t, t) for t in catalogue.TARGETS],
        method="filter_target",
        help_text="Queues having at least one step of this target.",
    )
    created_after = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="ISO 8601 date-time (inclusive)."
    )
    created_before = UtcDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="ISO 8601 date-time (exclusive)."
    )

    class Meta:
        model = Queue
        fields = ["status", "symbol", "target", "created_after", "created_before"]

    def get_form_class(self):
        # The form class (and its fields) once per process rather than per request: every form made
        # from it copies its fields, as Django's forms do, so sharing the class shares no state.
        form_class = _FORM_CLASSES.get(type(self))
        if form_class is None:
            form_class = _FORM_CLASSES[type(self)] = super().get_form_class()
        return form_class

    def filter_symbol(self, queryset, name, value):
        return queryset.filter(symbol=value.strip().upper())

    def filter_target(self, queryset, name, value):
        # A subquery rather than a join, so the list's step counts are not multiplied.
        return queryset.filter(pk__in=QueueRequest.objects.filter(target=value).values("queue_id"))


class EventFilter(django_filters.FilterSet):
    """The events list's filters, validated as form fields (e.g. a NUL character is a 400, not a
    PostgreSQL error)."""

    step = django_filters.CharFilter(field_name="step__name", help_text="Only this step's events.")
    status = django_filters.CharFilter(help_text="Only events with this status.")

    class Meta:
        model = TelemetryEvent
        fields = ["step", "status"]


class QueueFilterBackend(DjangoFilterBackend):
    """django-filter's backend, without building and validating the filter form for a request that
    names none of its filters (the plain list, its cursor pages): the answer is the same queryset, and
    the form was a tenth of such a request's Python time."""

    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None and not any(name in request.query_params
                                                   for name in filterset_class.base_filters):
            return queryset
        return super().filter_queryset(request, queryset, view)
