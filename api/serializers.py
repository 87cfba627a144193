"""Serializers for reading queues, steps and edges (writes go through jobs.submission.queue_create)."""
from __future__ import annotations

import functools
import operator
from datetime import datetime, timedelta

from django.db.models import CharField, IntegerField
from django.db.models.expressions import RawSQL
from drf_spectacular.utils import extend_schema_field
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from queues.models import Queue, QueueRequest, StepDependency, StepState


class StepSerializer(serializers.ModelSerializer):
    number = serializers.IntegerField(read_only=True, help_text="1-based position in `requests`.")
    collections_read = serializers.SerializerMethodField()
    collections_written = serializers.SerializerMethodField()
    depends_on = serializers.SerializerMethodField()

    class Meta:
        model = QueueRequest
        fields = [
            "number",
            "name",
            "target",
            "type",
            "streaming",
            "interval",
            "image",
            "job_name",
            "telemetry_id",
            "kafka_topic",
            "collection_name",
            "collection_inputs",
            "collection_output",
            "model_output",
            "graph_collection",
            "inference_interval",
            "source",
            "collections_read",
            "collections_written",
            "depends_on",
            "state",
            "reported_status",
            "records_written",
            "extra",
            "message",
            "launch_attempts",
            "launched_at",
            "started_at",
            "finished_at",
            "last_event_at",
            "state_changed_at",
        ]
        read_only_fields = fields

    def get_collections_read(self, step: QueueRequest) -> list[str]:
        return step.reads()

    def get_collections_written(self, step: QueueRequest) -> list[str]:
        return step.writes()

    def get_depends_on(self, step: QueueRequest) -> list[str]:
        """Names of the steps this one waits for (details in the queue's `edges`)."""
        return [edge.upstream.name for edge in step.upstream_edges.all()]


class EdgeSerializer(serializers.ModelSerializer):
    upstream = serializers.CharField(source="upstream.name", help_text="The step waited for.")
    downstream = serializers.CharField(source="downstream.name", help_text="The step that waits.")
    met = serializers.BooleanField(source="is_met", help_text="Whether the condition holds now.")

    class Meta:
        model = StepDependency
        fields = ["upstream", "downstream", "kind", "reason", "met"]
        read_only_fields = fields


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(help_text="Steps that succeeded.")
    total = serializers.IntegerField()


def _progress(queue: Queue) -> dict:
    if hasattr(queue, "progress_done"):  # the list: counted by its page query (list_rows)
        return {"done": queue.progress_done, "total": queue.progress_total}
    counts = getattr(queue, "step_state_counts", None)
    if counts is None:  # one queue (detail, create, stop): its steps are prefetched or read here
        counts = {}
        for step in queue.steps.all():
            counts[step.state] = counts.get(step.state, 0) + 1
    return {"done": counts.get(StepState.SUCCEEDED, 0), "total": sum(counts.values())}


def _step_count(*, succeeded_only: bool) -> RawSQL:
    # Written as SQL rather than a Subquery(OuterRef) expression: building and compiling that expression
    # was about a tenth of a list request's Python time; PostgreSQL gets the same correlated count.
    # The list's queue table is the query's root, so it is never aliased.
    condition, params = (' AND s."state" = %s', (StepState.SUCCEEDED,)) if succeeded_only else ("", ())
    sql = (f'SELECT COUNT(*) FROM "{QueueRequest._meta.db_table}" s '
           f'WHERE s."queue_id" = "{Queue._meta.db_table}"."id"{condition}')
    return RawSQL(sql, params, output_field=IntegerField())


def list_rows():
    """The queue list, newest first, as rows of the columns it shows, with their progress counted
    exactly in the page's own query.

    Two correlated counts per row, each an index range over one queue's steps: PostgreSQL evaluates
    them for the rows the LIMIT keeps (after the sort), never by grouping the history's steps, and the
    page costs one round trip instead of two. Named rows rather than model instances: a row is read
    once, by the list's serializer, and building a `Queue` (and a `User` for its submitter) per row
    was about a tenth of a list request's Python time.
    """
    return _list_rows().all()


@functools.cache
def _list_rows():
    # Built once per process and cloned per request: resolving the counts and the user's column took
    # ~0.6 ms of Python per request. A QuerySet is immutable to its users (every filter, order or slice
    # clones it) and this one is never evaluated itself.
    return Queue.objects.listed().annotate(
        progress_done=_step_count(succeeded_only=True), progress_total=_step_count(succeeded_only=False),
        **{_slug_column("submitted_by", "username"): _submitter_username()},
    ).values_list(*LIST_COLUMNS, "progress_done", "progress_total", _slug_column("submitted_by", "username"), named=True)


def _slug_column(relation: str, slug: str) -> str:
    return f"{relation}_{slug}"


def _submitter_username() -> RawSQL:
    # A correlated look-up rather than a join: a numbered page's id walk and its count are made from
    # the same queryset and must not join the users (a row expression is only evaluated for the rows
    # the page shows).
    relation = Queue._meta.get_field("submitted_by")
    user = relation.related_model._meta
    sql = (f'SELECT "{user.db_table}"."{user.get_field("username").column}" FROM "{user.db_table}" '
           f'WHERE "{user.db_table}"."{user.pk.column}" = "{Queue._meta.db_table}"."{relation.column}"')
    return RawSQL(sql, (), output_field=CharField())


_ZERO = timedelta(0)


class QueueListSerializer(serializers.ListSerializer):
    """Many queues, serialized with the fields resolved once for the page rather than once per row.

    A list page gives named rows (list_rows); model instances are serialized too, their step counts
    read in one query for the rows being serialized, not one per row.
    """

    def to_representation(self, data):
        queues = list(data.all() if hasattr(data, "all") else data)
        fields = _shared_fields(type(self.child)) if self.child.context_free else self.child._readable_fields
        if queues and isinstance(queues[0], tuple):
            plan = [(field.field_name, *_row_reader(field)) for field in fields]
        else:
            if queues and not hasattr(queues[0], "progress_done"):
                counts = Queue.objects.step_counts([queue.pk for queue in queues])
                for queue in queues:
                    queue.step_state_counts = counts[queue.pk]
            plan = [(field.field_name, _instance_reader(field), _representer(field)) for field in fields]
        return [_row(queue, plan) for queue in queues]


@functools.cache
def _shared_fields(serializer_class) -> tuple:
    # Building a ModelSerializer's fields (model introspection, copies of the declared fields) was about
    # a tenth of a list request's Python time. Shared by every page of the process, which is sound only
    # for a serializer whose fields read nothing from the request or context (`context_free`).
    return tuple(serializer_class()._readable_fields)


def _plain_attribute(field) -> str | None:
    """The attribute a field reads straight off the instance, or None when DRF must look it up."""
    attrs = field.source_attrs
    return attrs[0] if len(attrs) == 1 and field.source != "*" else None


def _instance_reader(field):
    attribute = _plain_attribute(field)
    return operator.attrgetter(attribute) if attribute is not None else field.get_attribute


def _row_reader(field) -> tuple:
    """How a named list row (list_rows) gives the field's value, and how the value is represented."""
    if isinstance(field, serializers.SlugRelatedField):  # the row holds the slug (`submitted_by_username`)
        return operator.attrgetter(_slug_column(field.source, field.slug_field)), _as_is
    attribute = _plain_attribute(field)
    computed = getattr(Queue, attribute, None) if attribute is not None else None
    if isinstance(computed, property):  # e.g. time_range: the model's own rule, over the row's columns
        return computed.fget, _representer(field)
    return _instance_reader(field), _representer(field)


def _as_is(value):
    return value


def _representer(field):
    """The field's to_representation, or a shortcut giving the same string for its usual values.

    A DateTimeField in ISO 8601 converts each value to the field's time zone and formats it; when that
    zone is UTC, a value already in UTC (what PostgreSQL gives) formats to the same string as is. Any
    other value goes through DRF.
    """
    output_format = getattr(field, "format", api_settings.DATETIME_FORMAT)
    if type(field) is not serializers.DateTimeField or output_format is None or output_format.lower() != ISO_8601:
        return field.to_representation
    zone = getattr(field, "timezone", None) or field.default_timezone()
    if zone is None or zone.utcoffset(None) != _ZERO or str(zone) != "UTC":
        return field.to_representation

    def represent(value):
        if not isinstance(value, datetime) or value.utcoffset() != _ZERO:
            return field.to_representation(value)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return represent


def _row(instance, plan) -> dict:
    # What Serializer.to_representation does, without re-walking the fields and sources for each row.
    row = {}
    for name, read, represent in plan:
        value = read(instance)
        row[name] = None if value is None else represent(value)
    return row


# The columns a list row shows (QueueSerializer's fields; `time_range` is made of two, `submitted_by` is
# the user's username, `progress` is counted by the page query), the only ones a list page reads
# (list_rows): every column read is decoded into Python for each row, and the user's row is mostly a
# password hash and dates.
LIST_COLUMNS = ("queue_id", "symbol", "time_range_start", "time_range_end", "status", "source", "message", "warnings",
                "created_at", "started_at", "finished_at", "stop_requested_at")


class QueueSerializer(serializers.ModelSerializer):
    """A queue in lists: no steps, but their progress (a list page serializes list_rows)."""

    # No field reads the request or the context: a list builds these fields once per process.
    context_free = True

    time_range = serializers.CharField(read_only=True, allow_null=True)
    submitted_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Queue
        fields = [
            "queue_id",
            "symbol",
            "time_range",
            "status",
            "progress",
            "source",
            "submitted_by",
            "message",
            "warnings",
            "created_at",
            "started_at",
            "finished_at",
            "stop_requested_at",
        ]
        read_only_fields = fields
        list_serializer_class = QueueListSerializer

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, queue: Queue) -> dict:
        return _progress(queue)


class QueueDetailSerializer(QueueSerializer):
    """A queue with its steps and the dependency edges between them."""

    context_free = False  # nested serializers: not vetted for sharing

    steps = StepSerializer(many=True, read_only=True)
    edges = EdgeSerializer(many=True, read_only=True)
    payload = serializers.JSONField(read_only=True, help_text="The payload as submitted.")

    class Meta(QueueSerializer.Meta):
        fields = QueueSerializer.Meta.fields + ["payload", "steps", "edges"]
        read_only_fields = fields


def queue_detail_queryset():
    from django.db.models import Prefetch

    return Queue.objects.select_related("submitted_by").prefetch_related(
        Prefetch("steps", queryset=QueueRequest.objects.prefetch_related("upstream_edges__upstream")),
        Prefetch("edges", queryset=StepDependency.objects.select_related("upstream", "downstream")),
    )
