"""The queue list's per-row figures (step counts, last failure), computed for the shown page only.

Counting with an annotation would group every step of every queue before paging; here it is one query
over the steps of the (at most `list_per_page`) queues shown, so the list costs the same at any history size.
The rows themselves are drawn by console/admin/rows.py.
"""
from __future__ import annotations

from collections import Counter

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.contrib.postgres.aggregates import ArrayAgg
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Max, Q, TextField, Value
from django.db.models.functions import Concat
from django.utils.functional import cached_property

from console.admin.progress import QueueCounts
from queues.models import LIST_DEFERRED, Queue, QueueRequest, StepState

LAST_FAILURE_STATES = (*StepState.FAILED_STATES, StepState.STOPPED)  # whose message the list shows


class QueueChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).defer(*LIST_DEFERRED)

    def get_results(self, request):
        super().get_results(request)
        attach_step_figures(self.result_list)


def attach_step_figures(queues) -> None:
    """Set `step_counts` (QueueCounts) and `last_failure` (str) on each queue of the page.

    One query for both: the page's steps grouped by queue and state, each failure-state group with its
    newest reason (a failed, lost or stopped step's message), so the list pays one round trip for them.
    """
    queues = list(queues)
    told = Q(state__in=LAST_FAILURE_STATES) & ~Q(message="")
    rows = (
        QueueRequest.objects.filter(queue_id__in=[queue.pk for queue in queues])
        .order_by()
        .values_list("queue_id", "state")
        .annotate(
            n=Count("pk"),
            failed_at=Max("state_changed_at", filter=told),
            failures=ArrayAgg(Concat("name", Value(": "), "message", output_field=TextField()), filter=told, order_by=("-state_changed_at",)),
        )
    )
    counts: dict[int, Counter] = {queue.pk: Counter() for queue in queues}
    newest: dict[int, tuple] = {}
    for queue_id, state, n, failed_at, failures in rows:
        counts[queue_id][state] += n
        if failures and (queue_id not in newest or failed_at > newest[queue_id][0]):
            newest[queue_id] = (failed_at, failures[0])
    for queue in queues:
        queue.step_counts = QueueCounts.of(counts[queue.pk])
        queue.last_failure = newest[queue.pk][1] if queue.pk in newest else ""


class SymbolFilter(admin.SimpleListFilter):
    """The symbols in use, read by a loose index scan: one index probe per distinct symbol.

    The stock filter runs SELECT DISTINCT over every queue of the history on each list view.
    """

    title = "symbol"
    parameter_name = "symbol"

    def lookups(self, request, model_admin):
        table = connection.ops.quote_name(Queue._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH RECURSIVE s(symbol) AS ((SELECT symbol FROM {table} ORDER BY symbol LIMIT 1) UNION ALL "
                f"SELECT (SELECT symbol FROM {table} WHERE symbol > s.symbol ORDER BY symbol LIMIT 1) FROM s "
                f"WHERE s.symbol IS NOT NULL) SELECT symbol FROM s WHERE symbol IS NOT NULL"
            )
            return [(symbol, symbol) for (symbol,) in cursor.fetchall()]

    def queryset(self, request, queryset):
        if self.value() and "\x00" in self.value():
            raise IncorrectLookupParameters("symbol")  # PostgreSQL refuses NUL in text: a 500 otherwise
        return queryset.filter(symbol=self.value()) if self.value() else queryset


class SourceFilter(admin.SimpleListFilter):
    """Where queues come from: a fixed set, so no DISTINCT over the history to list it."""

    title = "source"
    parameter_name = "source"
    SOURCES = ("api", "admin", "kafka")

    def lookups(self, request, model_admin):
        return [(source, source) for source in self.SOURCES]

    def queryset(self, request, queryset):
        if self.value() and self.value() not in self.SOURCES:
            raise IncorrectLookupParameters("source")
        return queryset.filter(source=self.value()) if self.value() else queryset


class QueuePaginator(Paginator):
    """Counts exactly, except the unfiltered list of a large history: there the planner's row estimate
    (pg_class.reltuples, kept by ANALYZE/autovacuum) stands in for a count(*) over every queue."""

    ESTIMATE_ABOVE = 10_000

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if query is not None and not query.where:
            estimate = _estimated_rows(self.object_list.model._meta.db_table)
            if estimate > self.ESTIMATE_ABOVE:
                return estimate
        return super().count


def _estimated_rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", [table])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else -1
