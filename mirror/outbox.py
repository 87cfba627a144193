"""Record that an entity changed, in the caller's transaction; enqueue the drain on commit.

Signals only call `record()`: the writing to ArangoDB happens later in `mirror.tasks.mirror_drain_task`.
Bulk paths that bypass signals (QuerySet.update, bulk_create) call `record()`/`record_many()`
themselves, inside the same transaction as their write, so a crash can't lose the change.

Nothing is recorded while the mirror is off (ARANGO_URL unset); turning it on later needs one
`manage.py arango_resync`.
"""
from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save

from mirror.models import VERSION_SEQUENCE, EntityKind, MirrorOutbox


def _upsert_sql(ids: str) -> str:
    """One row per entity: a repeated change only takes a newer version (coalescing). `created_at`
    keeps the oldest pending change, so the admin can show how far behind the mirror is. `ids`: a
    FROM item with columns id, doc_key; its parameters follow the kind's."""
    table = MirrorOutbox._meta.db_table
    return f"""
INSERT INTO {table} (kind, object_id, doc_key, version, created_at, attempts, last_error)
SELECT %s, ids.id, ids.doc_key, nextval('{VERSION_SEQUENCE}'), now(), 0, ''
FROM {ids}
ON CONFLICT (kind, object_id) DO UPDATE SET
    version = nextval('{VERSION_SEQUENCE}'),
    doc_key = COALESCE(NULLIF(EXCLUDED.doc_key, ''), {table}.doc_key)
"""


_UPSERT_SQL = _upsert_sql("unnest(%s::bigint[], %s::text[]) AS ids(id, doc_key)")
# Inside a step change's own statement (queues.signals.step_state_writing): the row it changed, if any.
_UPSERT_CHANGED_SQL = _upsert_sql("(SELECT changed.id, %s::text AS doc_key FROM changed) AS ids")


def enabled() -> bool:
    return bool(settings.ARANGO_ENABLED)


def record(kind: str, object_id: int, *, doc_key: str = "") -> None:
    """Note that one entity (queue / step / telemetry, by primary key) changed."""
    record_many(kind, [object_id], doc_keys=[doc_key])


def record_many(kind: str, object_ids: Iterable[int], *, doc_keys: Iterable[str] | None = None) -> None:
    """Note that these entities of one kind changed; call it inside the transaction that changed them."""
    if not enabled():
        return
    if kind not in EntityKind.values:
        raise ValueError(f"unknown mirror entity kind {kind!r}")
    ids = [int(pk) for pk in object_ids]
    if not ids:
        return
    keys = list(doc_keys) if doc_keys is not None else [""] * len(ids)
    # Sorted, so two transactions touching the same entities take the row locks in the same order.
    pairs = sorted(dict(zip(ids, keys)).items())
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT_SQL, [kind, [p[0] for p in pairs], [p[1] or "" for p in pairs]])
    _enqueue_drain_on_commit()


def record_queryset(kind: str, queryset) -> None:
    """Record the rows of a queryset, e.g. events stored by bulk_create(ignore_conflicts=True), which sets no pks."""
    record_many(kind, list(queryset.values_list("pk", flat=True)))


def record_instance(instance) -> None:
    """Record a Queue, QueueRequest or TelemetryEvent instance (also works for deleted ones)."""
    from mirror import documents

    kind, doc_key = documents.kind_and_key(instance)
    record(kind, instance.pk, doc_key=doc_key)


def _enqueue_drain_on_commit() -> None:
    # One drain per transaction is enough: it drains everything pending.
    pending = getattr(connection, "run_on_commit", None) or []
    if connection.in_atomic_block and any(entry[1] is _enqueue_drain for entry in pending):
        return
    transaction.on_commit(_enqueue_drain)


def _enqueue_drain() -> None:  # the on-commit hook (found by identity above)
    from mirror.tasks import enqueue_drain  # in the function: tasks import Celery, records need none

    enqueue_drain()


# ---------------------------------------------------------------- signal receivers
def _on_saved_or_deleted(sender, instance, **kwargs):
    if enabled():
        record_instance(instance)


def _on_step_state_writing(sender, step, **kwargs):
    if not enabled():
        return None
    from mirror import documents

    kind, doc_key = documents.kind_and_key(step)
    return _UPSERT_CHANGED_SQL, [kind, doc_key]


def _on_step_state_changed(sender, step, written_with_change=False, **kwargs):
    if enabled():
        if written_with_change:  # the outbox row was written by the change's statement (above)
            _enqueue_drain_on_commit()
        else:
            record_instance(step)


def _on_queue_status_changed(sender, queue, **kwargs):
    if enabled():
        record_instance(queue)


def _on_telemetry_ingested(sender, step_pks, event_keys, **kwargs):
    if enabled():
        from queues.models import TelemetryEvent

        record_queryset("telemetry", TelemetryEvent.objects.filter(event_key__in=event_keys))
        record_many("step", step_pks)


def connect_signals() -> None:
    from queues.models import Queue, QueueRequest, TelemetryEvent
    from queues.signals import queue_status_changed, step_state_changed, step_state_writing, telemetry_ingested

    for model in (Queue, QueueRequest, TelemetryEvent):
        post_save.connect(_on_saved_or_deleted, sender=model, dispatch_uid=f"mirror-save-{model.__name__}")
    # No post_delete receiver on TelemetryEvent: it would turn Django's fast cascade delete of a queue's
    # events into one signal per row. The drain removes a deleted queue's events by queue_id instead.
    for model in (Queue, QueueRequest):
        post_delete.connect(_on_saved_or_deleted, sender=model, dispatch_uid=f"mirror-delete-{model.__name__}")
    step_state_writing.connect(_on_step_state_writing, dispatch_uid="mirror-step-state-writing")
    step_state_changed.connect(_on_step_state_changed, dispatch_uid="mirror-step-state")
    queue_status_changed.connect(_on_queue_status_changed, dispatch_uid="mirror-queue-status")
    telemetry_ingested.connect(_on_telemetry_ingested, dispatch_uid="mirror-telemetry")
