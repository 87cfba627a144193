"""The python-arango writer: connect, create the schema if missing, versioned bulk upserts.

Version guard (read-compare-write): for each batch the writer reads the stored `version` of the
batch's keys with one AQL query, drops the documents whose stored version is the same or newer,
and bulk-writes the rest with `insert_many(overwrite_mode="replace")`. An AQL `UPSERT` with the
guard in its `UPDATE` branch would be atomic per document on a real server, but the test
emulator's AQL has no writes; the gap (a concurrent writer between our read and our write) only
opens when two drains hold the same entity, which the outbox lease prevents, and `arango_resync`
repairs it. Per-document errors of the bulk write are returned, never ignored.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import requests
from arango import ArangoClient
from arango.exceptions import ArangoServerError
from arango.http import DefaultHTTPClient
from django.conf import settings

from mirror import documents as d

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 15
# Persistent indexes per collection: (fields, unique). job_name is unique in PostgreSQL too.
INDEXES = {
    d.QUEUES: [(["status"], False), (["symbol"], False), (["created_at"], False)],
    d.STEPS: [(["queue_id"], False), (["state"], False), (["target"], False), (["job_name"], True)],
    d.TELEMETRY: [(["queue_id", "received_at"], False), (["step"], False)],
    d.COLLECTIONS: [(["name"], True)],
    d.QUEUE_STEPS: [(["step"], False)],
    d.STEP_READS: [(["step"], False), (["collection"], False)],
    d.STEP_WRITES: [(["step"], False), (["collection"], False)],
}


class MirrorUnavailable(Exception):
    """ArangoDB could not be reached or answered 5xx: retry later, keep the outbox."""


@dataclass
class WriteResult:
    written: int = 0
    skipped: int = 0  # stored version was the same or newer
    errors: dict[str, str] = field(default_factory=dict)  # _key -> error message


def _transient(exc: Exception) -> bool:
    if isinstance(exc, (ConnectionError, requests.exceptions.RequestException)):
        return True
    return isinstance(exc, ArangoServerError) and (exc.http_code or 0) >= 500


class unavailable_on_network_errors:
    """Context manager: network failures and 5xx become MirrorUnavailable."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and _transient(exc):
            raise MirrorUnavailable(f"ArangoDB unavailable: {exc}") from exc
        return False


def connect(*, ensure: bool = True):
    """The mirror database handle (creating database, collections, indexes and graph if missing)."""
    client = ArangoClient(
        hosts=settings.ARANGO_URL,
        # No urllib3 retries with sleeps inside a Celery task: Celery's own backoff retries the batch.
        http_client=DefaultHTTPClient(retry_attempts=0, request_timeout=REQUEST_TIMEOUT_SECONDS),
        request_timeout=REQUEST_TIMEOUT_SECONDS,
    )
    auth = {"username": settings.ARANGO_USER, "password": settings.ARANGO_PASSWORD or ""}
    target = (settings.ARANGO_URL, settings.ARANGO_DB)
    with unavailable_on_network_errors():
        if ensure and target not in _ensured:
            system = client.db("_system", **auth)
            if not system.has_database(settings.ARANGO_DB):
                system.create_database(settings.ARANGO_DB)
        db = client.db(settings.ARANGO_DB, **auth)
        if ensure and target not in _ensured:
            ensure_schema(db)
            _ensured.add(target)
    return db


# Schema checked once per process and target (a drain runs often); arango_resync always checks.
_ensured: set[tuple[str, str]] = set()


def forget_schema() -> None:
    _ensured.clear()


def ensure_schema(db) -> None:
    """Create what is missing; safe to run on every drain (a few reads when all exists)."""
    existing = {c["name"] for c in db.collections()}
    for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS:
        if name not in existing:
            db.create_collection(name, edge=name in d.EDGE_COLLECTIONS)
    for name, specs in INDEXES.items():
        have = {(tuple(i.get("fields") or ()), bool(i.get("unique"))) for i in db.collection(name).indexes()}
        for fields, unique in specs:
            if (tuple(fields), unique) not in have:
                db.collection(name).add_index({"type": "persistent", "fields": fields, "unique": unique})
    if not db.has_graph(d.GRAPH):
        db.create_graph(d.GRAPH, edge_definitions=d.EDGE_DEFINITIONS)


def stored_versions(db, collection: str, keys: list[str]) -> dict[str, int]:
    if not keys:
        return {}
    cursor = db.aql.execute("FOR doc IN @@col FILTER doc._key IN @keys RETURN doc",
                            bind_vars={"@col": collection, "keys": keys}, batch_size=1000)
    return {doc["_key"]: doc.get("version") or 0 for doc in cursor}


def upsert_versioned(db, collection: str, docs: list[dict]) -> WriteResult:
    """Write documents newer than what is stored; report per-document errors by key."""
    result = WriteResult()
    newest: dict[str, dict] = {}
    for doc in docs:  # the same key twice in one batch: keep the newer
        if doc["_key"] not in newest or newest[doc["_key"]]["version"] < doc["version"]:
            newest[doc["_key"]] = doc
    stored = stored_versions(db, collection, list(newest))
    fresh = [doc for key, doc in newest.items() if stored.get(key, -1) < doc["version"]]
    result.skipped = len(newest) - len(fresh)
    if not fresh:
        return result
    outcome = db.collection(collection).insert_many(fresh, overwrite_mode="replace", silent=False)
    for doc, item in zip(fresh, outcome):
        if isinstance(item, Exception):
            if _transient(item):
                raise item
            result.errors[doc["_key"]] = f"{collection}/{doc['_key']}: {getattr(item, 'error_message', None) or item}"
        else:
            result.written += 1
    return result


def insert_missing(db, collection: str, docs: list[dict]) -> WriteResult:
    """Insert documents that never change (data-collection vertices); existing ones are kept."""
    result = WriteResult()
    unique = list({doc["_key"]: doc for doc in docs}.values())
    if not unique:
        return result
    outcome = db.collection(collection).insert_many(unique, overwrite_mode="ignore", silent=False)
    for doc, item in zip(unique, outcome):
        if isinstance(item, Exception):
            result.errors[doc["_key"]] = f"{collection}/{doc['_key']}: {getattr(item, 'error_message', None) or item}"
        else:
            result.written += 1
    return result


def edges_of_steps(db, collection: str, step_keys: list[str]) -> list[dict]:
    if not step_keys:
        return []
    cursor = db.aql.execute("FOR e IN @@col FILTER e.step IN @keys RETURN e",
                            bind_vars={"@col": collection, "keys": step_keys}, batch_size=1000)
    return list(cursor)


def linked_collections(db, collection: str, names: list[str]) -> set[str]:
    """Which of these data collections still have an edge in this edge collection."""
    cursor = db.aql.execute("FOR e IN @@col FILTER e.collection IN @names RETURN DISTINCT e.collection",
                            bind_vars={"@col": collection, "names": names}, batch_size=1000)
    return set(cursor)


def keys_where(db, collection: str, attribute: str, values: list) -> list[str]:
    if not values:
        return []
    cursor = db.aql.execute(f"FOR doc IN @@col FILTER doc.{attribute} IN @values RETURN doc._key",
                            bind_vars={"@col": collection, "values": values}, batch_size=1000)
    return list(cursor)


def all_documents(db, collection: str):
    return db.aql.execute("FOR doc IN @@col RETURN doc", bind_vars={"@col": collection}, batch_size=1000)


def delete_keys(db, collection: str, keys) -> int:
    """Delete by key, one request each (the emulator has no bulk delete); missing keys are fine."""
    coll, deleted = db.collection(collection), 0
    for key in keys:
        deleted += bool(coll.delete(key, ignore_missing=True))
    return deleted
