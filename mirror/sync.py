"""Drain the outbox into ArangoDB (a service; the task calls it). The rebuild is in mirror.resync.

Ordering argument, why an older state never wins: a drain claims outbox rows and takes a fresh
`version` from `mirror_version_seq` in one statement, and only then reads the rows' current
state. Any change committed after that read bumps its outbox row's version, so the claimed row is not
deleted and a later drain, whose version is larger, writes the newer state; the writer keeps the
larger version per document. Network I/O happens outside transactions; a claim is a lease
(`claimed_until`) so a crashed drain's rows come back.
"""
from __future__ import annotations

import logging
import operator
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from typing import NamedTuple

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from mirror import arango
from mirror import documents as d
from mirror.deletes import delete_entities, prune_collections
from mirror.models import VERSION_SEQUENCE, EntityKind, MirrorOutbox, MirrorState

logger = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
MAX_BATCHES_PER_RUN = 20
ERROR_BACKOFF_MAX_SECONDS = 300


def next_version() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(%s)", [VERSION_SEQUENCE])
        return cursor.fetchone()[0]


# ---------------------------------------------------------------- building and writing documents
@dataclass
class Batch:
    """Documents for one write, with which owner (outbox row id, or None in a resync) each came from."""

    version: int
    docs: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    owners: dict[tuple[str, str], set] = field(default_factory=lambda: defaultdict(set))
    steps: dict[str, tuple] = field(default_factory=dict)  # step key -> (step, queue_id), for its lineage

    def add(self, collection: str, doc: dict, owner) -> None:
        if (collection, doc["_key"]) not in self.owners:
            self.docs[collection].append(doc)
        self.owners[(collection, doc["_key"])].add(owner)

    def add_queue(self, queue, owner=None) -> None:
        self.add(d.QUEUES, d.queue_doc(queue, self.version), owner)

    def add_step(self, step, owner=None) -> None:
        queue_id = _queue_id_of(step)
        doc = d.step_doc(step, queue_id, self.version)
        self.add(d.STEPS, doc, owner)
        # Its lineage documents are made by `add_lineage` when the write finds it has to relink
        # the step (rarely): most changes are progress and state.
        self.steps.setdefault(doc["_key"], (step, queue_id))

    def add_lineage(self, step_key: str) -> None:
        step, queue_id = self.steps[step_key]
        for owner in self.owners[(d.STEPS, step_key)]:
            for name in step.reads() + step.writes():
                self.add(d.COLLECTIONS, d.collection_doc(name), owner)
            for collection, edges in d.step_edges(step, queue_id, self.version).items():
                for edge in edges:
                    self.add(collection, edge, owner)

    def add_event(self, event, owner=None) -> None:
        step_name = (event.mirror_step_name if hasattr(event, "mirror_step_name") else event.step.name) \
            if event.step_id else None
        self.add(d.TELEMETRY, d.telemetry_doc(event, _queue_id_of(event), step_name, self.version), owner)


def _queue_id_of(row) -> str:
    # Read with the row by `_steps()`/`_events()`: a joined queue would be a whole model per row
    # (payload, timestamps) for one string.
    return row.mirror_queue_id if hasattr(row, "mirror_queue_id") else row.queue.queue_id


def _steps(condition):
    from queues.models import QueueRequest

    return QueueRequest.objects.filter(condition).only(*d.step_fields()).annotate(mirror_queue_id=F("queue__queue_id"))


def _events(condition):
    from queues.models import TelemetryEvent

    return TelemetryEvent.objects.filter(condition).annotate(mirror_queue_id=F("queue__queue_id"),
                                                             mirror_step_name=F("step__name"))


def _any(model, column: str, ids) -> Q:
    """`column = ANY(ids)`: one array parameter instead of a placeholder per id (Django's `__in`
    builds and converts one per id, a noticeable share of a 500-row batch)."""
    return Q(RawSQL(f'"{model._meta.db_table}"."{column}" = ANY(%s)', [list(ids)], output_field=BooleanField()))


def write_batch(db, batch: Batch, *, relink_all: bool = False) -> dict:
    """Write the lineage of relinked steps, then the vertices. Returns owner -> error.

    A step is relinked (data-collection vertices, edges written, edges it no longer has dropped)
    when its stored document is missing or has other reads/writes, or always with `relink_all` (a
    resync repairs lineage whatever is stored). A progress or state change leaves the lineage as it
    is: rewriting it was three times the documents of the change. The step document is written
    after its lineage, so a drain cut off in between leaves the old reads/writes stored and the next
    drain relinks; a step whose lineage was refused is not written either (its row is retried)."""
    errors: dict = defaultdict(list)

    def blame(collection, result):
        for key, message in result.errors.items():
            for owner in batch.owners[(collection, key)]:
                errors[owner].append(message)
        return result

    steps = {doc["_key"]: doc for doc in batch.docs[d.STEPS]}
    relink = set(steps) if relink_all else arango.lineage_changed(db, d.STEPS, list(steps.values()))
    refused = _write_lineage(db, batch, {key: steps[key] for key in relink}, blame) if relink else set()
    for collection in (d.QUEUES, d.STEPS, d.TELEMETRY):
        docs = batch.docs[collection]
        if collection == d.STEPS and refused:
            docs = [doc for doc in docs if doc["_key"] not in refused]
        blame(collection, arango.upsert_versioned(db, collection, docs))
    return {owner: "; ".join(messages) for owner, messages in errors.items()}


def _write_lineage(db, batch: Batch, steps: dict[str, dict], blame) -> set[str]:
    """Collections, edges and stale edges of these step documents; returns the keys of steps whose
    lineage was refused."""
    for key in steps:
        batch.add_lineage(key)
    result = blame(d.COLLECTIONS, arango.insert_missing(db, d.COLLECTIONS, batch.docs[d.COLLECTIONS]))
    refused_names = {doc["name"] for doc in batch.docs[d.COLLECTIONS] if doc["_key"] in result.errors}
    refused = {key for key, doc in steps.items() if refused_names & set(doc["reads"] + doc["writes"])}
    unlinked: set[str] = set()
    for collection in d.EDGE_COLLECTIONS:
        edges = batch.docs[collection]
        result = blame(collection, arango.upsert_versioned(db, collection, edges))
        refused.update(edge["step"] for edge in edges if edge["_key"] in result.errors)
        # Guarded on the server: an edge a newer writer (re)wrote stays.
        unlinked |= arango.remove_other_edges(db, collection, sorted(steps), keep=[e["_key"] for e in edges],
                                              older_than=batch.version)
    prune_collections(db, unlinked)
    return refused


# ---------------------------------------------------------------- the drain
@dataclass
class DrainResult:
    synced: int = 0
    failed: int = 0
    batches: int = 0
    more: bool = False  # stopped at max_batches with a full last batch: rows are probably still pending


_TABLE = MirrorOutbox._meta.db_table
_COLUMNS = ("id", "kind", "object_id", "doc_key", "version", "created_at", "attempts")  # = Claimed
# One statement (a drain runs on every commit, so its round trips are the lag): lease the oldest free
# rows, skipping those a writer or another drain holds, and take the batch's version in the same
# statement, i.e. before the drain reads any state. No rows claimed, no version taken.
_CLAIM_SQL = f"""
WITH batch AS (SELECT nextval('{VERSION_SEQUENCE}') AS version),
picked AS (
    SELECT id FROM {_TABLE} WHERE claimed_until IS NULL OR claimed_until < clock_timestamp()
    ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE {_TABLE} AS o SET claimed_until = clock_timestamp() + %s FROM picked WHERE o.id = picked.id
RETURNING {", ".join(f"o.{c}" for c in _COLUMNS)}, (SELECT version FROM batch)
"""
# Delete the rows whose version is still the claimed one, release the others: they changed again
# after the claim, so the change just written is no longer pending and the oldest one that is
# happened after the claim (claimed_until - lease). Without moving created_at, an entity that
# changes faster than a drain cycle would look older and older. The rows are locked first and
# compared as locked, so the DELETE and the UPDATE split them exactly. `{lock}`: see _each_row_free.
_FINISH_SQL = f"""
WITH mine AS (
    SELECT o.id, o.version = c.v AS written FROM {_TABLE} AS o JOIN unnest(%s::bigint[], %s::bigint[]) AS c(id, v)
    ON o.id = c.id {{lock}}
),
gone AS (DELETE FROM {_TABLE} WHERE id IN (SELECT id FROM mine WHERE written)),
kept AS (UPDATE {_TABLE} SET claimed_until = NULL, created_at = GREATEST(created_at, claimed_until - %s)
         WHERE id IN (SELECT id FROM mine WHERE NOT written))
SELECT id FROM mine
"""
_RELEASE_SQL = f"""
UPDATE {_TABLE} SET claimed_until = NULL WHERE id IN (SELECT id FROM {_TABLE} WHERE id = ANY(%s) {{lock}})
RETURNING id
"""


def _each_row_free(sql: str, ids: list[int], params) -> None:
    """Run a finish/release statement over leased outbox rows without ever waiting for one row while
    holding another: a writer's transaction locks outbox rows in its own order (its entities', one
    statement after another), so a statement that held some rows and waited for the next one made a
    cycle, and PostgreSQL aborted the drain or the application's transaction. Rows a writer holds
    right now are skipped, then done one statement each, which waits holding nothing (rare: a writer
    holds a row for the few milliseconds of its transaction). `params(ids)`: the statement's."""
    with connection.cursor() as cursor:
        cursor.execute(sql.format(lock="FOR UPDATE SKIP LOCKED"), params(ids))
        done = {row[0] for row in cursor.fetchall()}
        for pk in ids:
            if pk not in done:
                cursor.execute(sql.format(lock="FOR UPDATE"), params([pk]))


class Claimed(NamedTuple):
    """A leased outbox row: what the drain needs of it."""

    pk: int
    kind: str
    object_id: int
    doc_key: str
    version: int
    created_at: datetime
    attempts: int


def _claim(limit: int) -> tuple[int, list[Claimed]]:
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [limit, LEASE])
        found = cursor.fetchall()
    if not found:
        return 0, []
    rows = sorted((Claimed(*r[:-1]) for r in found), key=lambda r: (r.created_at, r.pk))
    return found[0][-1], rows


def _build(version: int, rows: list[Claimed]) -> tuple[Batch, dict[str, list[tuple[str, int]]]]:
    from queues.models import Queue, QueueRequest, TelemetryEvent

    batch, deleted = Batch(version), defaultdict(list)
    by_kind = defaultdict(dict)
    for row in rows:
        by_kind[row.kind][row.object_id] = row
    # One query per kind present, whatever the batch size (a queue's steps come with it: they are
    # created by bulk_create, without signals).
    queue_pks, step_pks, event_pks = (list(by_kind[k]) for k in (EntityKind.QUEUE, EntityKind.STEP, EntityKind.TELEMETRY))
    queues = {q.pk: q for q in Queue.objects.filter(_any(Queue, "id", queue_pks))} if queue_pks else {}
    step_filter = [_any(QueueRequest, "id", step_pks)] if step_pks else []
    step_filter += [_any(QueueRequest, "queue_id", queues)] if queues else []
    steps = _steps(reduce(operator.or_, step_filter)) if step_filter else []
    events = {e.pk: e for e in _events(_any(TelemetryEvent, "id", event_pks))} if event_pks else {}
    for pk, queue in queues.items():
        batch.add_queue(queue, by_kind[EntityKind.QUEUE][pk].pk)
    found_steps = set()
    for step in steps:
        # Steps are written with their queue too: they are created by bulk_create, without signals.
        row = by_kind[EntityKind.STEP].get(step.pk) or by_kind[EntityKind.QUEUE][step.queue_id]
        batch.add_step(step, row.pk)
        found_steps.add(step.pk)
    for pk, event in events.items():
        batch.add_event(event, by_kind[EntityKind.TELEMETRY][pk].pk)
    found = {EntityKind.QUEUE: set(queues), EntityKind.STEP: found_steps, EntityKind.TELEMETRY: set(events)}
    for row in rows:
        if row.object_id not in found[row.kind]:
            if row.doc_key:
                deleted[row.kind].append((row.doc_key, row.object_id))
            else:  # recorded by id only and gone since: nothing to address; arango_resync removes leftovers
                logger.warning("mirror: %s %s vanished before it was mirrored", row.kind, row.object_id)
    return batch, deleted


def _finish(rows: list[Claimed], errors: dict) -> None:
    claimed = {r.pk: r.version for r in rows if r.pk not in errors}
    if claimed:
        _each_row_free(_FINISH_SQL, list(claimed), lambda ids: [ids, [claimed[pk] for pk in ids], LEASE])
    now = timezone.now()
    for row in rows:
        if row.pk in errors:
            delay = min(2 ** (row.attempts + 1), ERROR_BACKOFF_MAX_SECONDS)  # a bad document doesn't spin the loop
            MirrorOutbox.objects.filter(pk=row.pk).update(
                attempts=F("attempts") + 1, last_error=errors[row.pk][:4000], claimed_until=now + timedelta(seconds=delay)
            )


def _release(rows: list[Claimed]) -> None:
    _each_row_free(_RELEASE_SQL, [r.pk for r in rows], lambda ids: [ids])


def mirror_drain(*, batch_size: int | None = None, max_batches: int | None = None) -> DrainResult:
    """Sync pending changes to ArangoDB; raises arango.MirrorUnavailable (rows kept) when it is down.
    At most `max_batches` batches per run (a backlog must not hold a worker); `result.more` says
    that rows are probably left, so the caller starts the next run at once."""
    result = DrainResult()
    if not settings.ARANGO_ENABLED:
        return result
    batch_size = batch_size or settings.MIRROR_BATCH_SIZE
    max_batches = max_batches or MAX_BATCHES_PER_RUN
    try:
        db = arango.connect()
        # One writer thread: it only talks HTTP, all PostgreSQL work stays on the caller's connection.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror-write") as writer:
            _drain_batches(db, writer, batch_size, max_batches, result)
    except Exception as exc:
        arango.forget_schema()  # e.g. the database was dropped: the next drain creates it again
        _note(error=f"{type(exc).__name__}: {exc}")
        raise
    _note(synced=result.synced, error=_summary(result) if result.failed else None)
    return result


def _drain_batches(db, writer, batch_size: int, max_batches: int, result: DrainResult) -> None:
    """Claim and build batch N+1 while batch N is written (a change would otherwise wait for the
    whole cycle of the batch in flight, then for its own). Builds stay one after the other on this
    thread, each after its claim, so a later batch has a larger version and read a later state (the
    ordering argument above); one write is in flight at a time, and it is settled (finished, or
    released on failure) before this returns, so no write goes on after the drain ended."""
    in_flight: tuple[list[Claimed], Future] | None = None
    claimed: list[Claimed] = []
    try:
        while True:
            claimed = []
            if result.batches + (in_flight is not None) < max_batches:
                version, claimed = _claim(batch_size)
                result.more = len(claimed) == batch_size
            if claimed:
                batch, deleted = _build(version, claimed)
            if in_flight is not None:
                errors = in_flight[1].result()
                rows, in_flight = in_flight[0], None
                _settle(rows, errors, result)
            if not claimed:
                return
            in_flight, claimed = (claimed, writer.submit(_write, db, batch, deleted)), []
    except BaseException:
        if claimed:
            _release(claimed)
        if in_flight is not None:
            try:
                errors = in_flight[1].result()
            except BaseException:
                _release(in_flight[0])
            else:
                _settle(in_flight[0], errors, result)
        raise


def _write(db, batch: Batch, deleted: dict[str, list[tuple[str, int]]]) -> dict:
    """The writer thread's part: HTTP only."""
    with arango.unavailable_on_network_errors():
        errors = write_batch(db, batch)
        delete_entities(db, deleted, version=batch.version)
    return errors


def _settle(rows: list[Claimed], errors: dict, result: DrainResult) -> None:
    _finish(rows, errors)
    result.batches += 1
    result.failed += len(errors)
    result.synced += len(rows) - len(errors)
    if errors:
        logger.warning("mirror: %d document(s) rejected by ArangoDB", len(errors),
                       extra={"errors": list(errors.values())[:5]})


def _summary(result: DrainResult) -> str:
    return f"{result.failed} document(s) rejected; see the outbox rows' last_error"


def _note(*, synced: int | None = None, error: str | None = None) -> None:
    now = timezone.now()
    fields = {}
    if synced is not None:
        fields.update(last_success_at=now, last_synced=synced, total_synced=F("total_synced") + synced)
    if error is not None:
        fields.update(last_error_at=now, last_error=error[:4000])
    if not MirrorState.objects.filter(pk=1).update(**fields):  # one query per drain; the row exists after the first
        MirrorState.get()
        MirrorState.objects.filter(pk=1).update(**fields)


# ---------------------------------------------------------------- status
def mirror_status() -> dict:
    """Numbers for the admin, metrics and health checks."""
    state = MirrorState.objects.filter(pk=1).first() or MirrorState()
    pending = MirrorOutbox.objects.all()
    oldest = pending.order_by("created_at").values_list("created_at", flat=True).first()
    return {
        "enabled": bool(settings.ARANGO_ENABLED),
        "backlog": pending.count(),
        "failing": pending.exclude(last_error="").count(),
        "oldest_pending_at": oldest,
        "oldest_pending_age_seconds": (timezone.now() - oldest).total_seconds() if oldest else 0.0,
        "last_success_at": state.last_success_at,
        "last_error_at": state.last_error_at,
        "last_error": state.last_error,
        "total_synced": state.total_synced,
    }
