"""Query filters for the queue list: status, symbol, target, created range."""
from __future__ import annotations

import functools
from datetime import timezone

import django_filters
from django.core.exceptions import ValidationError
from django.forms.utils import ErrorDict, ErrorList
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from django_filters.utils import translate_validation

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

    def filter_symbol(self, queryset, name, value):
        return queryset.filter(symbol=value.strip().upper())

    def filter_target(self, queryset, name, value):
        # A subquery rather than a join, so the list's step counts are not multiplied.
        return queryset.filter(pk__in=_queues_with_steps_of(value))


@functools.cache
def _queues_with_steps_of(target: str):
    """Built once per target (a validated choice, so a few): resolving it into a page's query clones
    it, as with every QuerySet used as a subquery."""
    return QueueRequest.objects.filter(target=target).values("queue_id")


class EventFilter(django_filters.FilterSet):
    """The events list's filters, validated as form fields (e.g. a NUL character is a 400, not a
    PostgreSQL error)."""

    step = django_filters.CharFilter(field_name="step__name", help_text="Only this step's events.")
    status = django_filters.CharFilter(help_text="Only events with this status.")

    class Meta:
        model = TelemetryEvent
        fields = ["step", "status"]


class QueueFilterBackend(DjangoFilterBackend):
    """django-filter's backend, running only the filters a request names, with the filters and their
    form fields made once per process.

    django-filter builds a FilterSet and its form for each request, deep-copying every filter and then
    every form field: about two thirds of a filtered request's filtering time, and the whole of it for
    the plain list and its cursor pages, which name no filter. Here each named value goes through its
    own form field's `clean()` and its own filter's `filter()`, as the form and the FilterSet run them,
    so the rows, and the 400's fields, messages and their order, are django-filter's. The FilterSet
    class still describes the parameters (OpenAPI) and draws the browsable API's form.
    """

    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is None:
            return queryset
        params, filters = request.query_params, _filters_and_fields(filterset_class)
        named, errors = [], ErrorDict()
        for name, (filter_, field) in filters.items():
            if name not in params:
                continue  # an absent value is empty: the filter would return the queryset as it is
            try:
                named.append((filter_, field.clean(field.widget.value_from_datadict(params, {}, name))))
            except ValidationError as exc:
                errors[name] = ErrorList(exc.error_list)
        if errors:
            raise translate_validation(errors)
        for filter_, value in named:
            queryset = filter_.filter(queryset, value)
        return queryset


@functools.cache
def _filters_and_fields(filterset_class) -> dict:
    """Each filter of one FilterSet instance (a `method=` filter calls that instance's method) with its
    form field, made once per process. Neither changes when used: a field's `clean()` and a filter's
    `filter()` read their own settings only."""
    return {name: (filter_, filter_.field) for name, filter_ in filterset_class().filters.items()}
