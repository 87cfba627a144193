"""The python-arango writer: connect, create the schema if missing, versioned bulk upserts.

Least privilege: the mirror's user needs `rw` on ARANGO_DB only. `connect()` asks that database
whether it exists (`GET /_db/<db>/_api/database/current`) and goes to `_system` only to create it
when it is missing, which needs `rw` on `_system`; without it the error says what to grant.

Version guard, atomic on the server: one AQL query per batch and collection,
`UPSERT {_key} INSERT doc REPLACE (OLD.version < doc.version ? doc : OLD)`, so the comparison and
the write happen in one transaction and a concurrent writer (a resync beside a drain) can never
put an older document over a newer one. `exclusive` serialises writers per collection, so a
single server never answers with a write-write conflict (1200); if one does (a cluster), the batch
is retried later. A query is all or nothing: when a document is refused (e.g. a unique index),
the batch is written again one document per query to blame the right one. Deletes are one
`REMOVE` query per batch, with the same version guard where a newer writer could interfere.
Schema creation races (another process creating the same thing) count as success.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import quote

import requests
from arango import ArangoClient
from arango.exceptions import ArangoServerError, DatabasePropertiesError
from arango.http import DefaultHTTPClient
from django.conf import settings

from mirror import documents as d

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 15
# Persistent indexes per collection: (fields, unique). job_name is unique in PostgreSQL too.
INDEXES = {
    d.QUEUES: [(["status"], False), (["symbol"], False), (["created_at"], False)],
    d.STEPS: [(["queue_id"], False), (["state"], False), (["target"], False), (["job_name"], True)],
    d.TELEMETRY: [(["queue_id", "received_at"], False), (["step"], False), (["queue_pg_id"], False)],
    d.COLLECTIONS: [(["name"], True)],
    d.QUEUE_STEPS: [(["step"], False)],
    d.STEP_READS: [(["step"], False), (["collection"], False)],
    d.STEP_WRITES: [(["step"], False), (["collection"], False)],
}


class MirrorUnavailable(Exception):
    """ArangoDB could not be reached or answered 5xx: retry later, keep the outbox."""


class MirrorMisconfigured(Exception):
    """ArangoDB refused the mirror's user (credentials or rights): an operator has to act."""


# Created concurrently by someone else: what we wanted exists (duplicate name, graph exists).
ALREADY_EXISTS = {1207, 1925}
CONFLICT = 1200  # write-write conflict: transient
NOT_AUTHORIZED = 11
DATABASE_NOT_FOUND = 1228


@dataclass
class WriteResult:
    written: int = 0
    skipped: int = 0  # stored version was the same or newer
    errors: dict[str, str] = field(default_factory=dict)  # _key -> error message


def _transient(exc: Exception) -> bool:
    if isinstance(exc, (ConnectionError, requests.exceptions.RequestException)):
        return True
    return isinstance(exc, ArangoServerError) and ((exc.http_code or 0) >= 500 or exc.error_code == CONFLICT)


def _refused(exc: Exception) -> bool:
    return isinstance(exc, ArangoServerError) and exc.http_code in (401, 403)


def _misconfigured(what: str, exc: ArangoServerError) -> MirrorMisconfigured:
    return MirrorMisconfigured(
        f"ArangoDB refused {what} to user {settings.ARANGO_USER!r} (HTTP {exc.http_code}, errorNum {exc.error_code}): "
        f"check ARANGO_USER/ARANGO_PASSWORD and grant rw on database {settings.ARANGO_DB!r}"
    )


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
    auth = {"username": settings.ARANGO_USER, "password": settings.ARANGO_PASSWORD or ""}
    target = (settings.ARANGO_URL, settings.ARANGO_DB)
    client = _client()
    with unavailable_on_network_errors():
        db = client.db(settings.ARANGO_DB, **auth)
        if ensure and target not in _ensured:
            if not database_exists(db):
                create_database(client.db("_system", **auth))
            try:
                ensure_schema(db)
            except ArangoServerError as exc:
                if _refused(exc):
                    raise _misconfigured("creating collections", exc) from exc
                raise
            _ensured.add(target)
    return db


_clients: dict[str, ArangoClient] = {}


def _client() -> ArangoClient:
    """One client (and HTTP session) per process and URL: a drain runs on every commit."""
    url = settings.ARANGO_URL
    if url not in _clients:
        _clients.clear()  # settings changed (tests): keep no stale sessions
        _clients[url] = ArangoClient(
            hosts=url,
            # No urllib3 retries with sleeps inside a Celery task: Celery's own backoff retries the batch.
            http_client=DefaultHTTPClient(retry_attempts=0, request_timeout=REQUEST_TIMEOUT_SECONDS),
            request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    return _clients[url]


def database_exists(db) -> bool:
    """Ask the target database itself: needs no right on `_system`."""
    try:
        db.properties()
    except DatabasePropertiesError as exc:
        if exc.error_code == DATABASE_NOT_FOUND:
            return False
        if _refused(exc):
            raise _misconfigured(f"access to database {settings.ARANGO_DB!r}", exc) from exc
        raise
    return True


def create_database(system) -> None:
    try:
        # Listing the user grants it rw on the new database; a creator gets no rights otherwise.
        system.create_database(settings.ARANGO_DB, users=[
            {"username": settings.ARANGO_USER, "password": settings.ARANGO_PASSWORD or "", "active": True}])
    except ArangoServerError as exc:
        if exc.error_code in ALREADY_EXISTS:
            return
        if _refused(exc):
            raise MirrorMisconfigured(
                f"database {settings.ARANGO_DB!r} does not exist and user {settings.ARANGO_USER!r} may not create it "
                f"(needs rw on _system): create it and grant the user rw on it"
            ) from exc
        raise


# Schema checked once per process and target (a drain runs often); arango_resync always checks.
_ensured: set[tuple[str, str]] = set()


def forget_schema() -> None:
    _ensured.clear()


def _created_elsewhere(create) -> None:
    """Run a create call; another process having created the same thing first is success."""
    try:
        create()
    except ArangoServerError as exc:
        if exc.error_code not in ALREADY_EXISTS:
            raise


def ensure_schema(db) -> None:
    """Create what is missing; safe to run on every drain and beside another creator."""
    existing = {c["name"] for c in db.collections()}
    for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS:
        if name not in existing:
            _created_elsewhere(lambda name=name: db.create_collection(name, edge=name in d.EDGE_COLLECTIONS))
    for name, specs in INDEXES.items():
        have = {(tuple(i.get("fields") or ()), bool(i.get("unique"))) for i in db.collection(name).indexes()}
        for fields, unique in specs:
            if (tuple(fields), unique) not in have:  # adding an index is "ensure" on the server: idempotent
                _created_elsewhere(lambda name=name, fields=fields, unique=unique: db.collection(name).add_index(
                    {"type": "persistent", "fields": fields, "unique": unique}))
    if not db.has_graph(d.GRAPH):
        _created_elsewhere(lambda: db.create_graph(d.GRAPH, edge_definitions=d.EDGE_DEFINITIONS))


# The guard: replace only when the stored version is older (a missing version counts as oldest).
UPSERT_AQL = """
FOR doc IN @docs
  UPSERT {_key: doc._key} INSERT doc REPLACE (OLD.version < doc.version ? doc : OLD) IN @@col
  OPTIONS {exclusive: true}
  RETURN OLD.version
"""


def _upsert(db, collection: str, docs: list[dict]) -> list:
    cursor = db.aql.execute(UPSERT_AQL, bind_vars={"@col": collection, "docs": docs}, batch_size=len(docs) + 1)
    return list(cursor)


def upsert_versioned(db, collection: str, docs: list[dict]) -> WriteResult:
    """Write documents newer than what is stored, atomically; report per-document errors by key."""
    result = WriteResult()
    newest: dict[str, dict] = {}
    for doc in docs:  # the same key twice in one batch: keep the newer
        if doc["_key"] not in newest or newest[doc["_key"]]["version"] < doc["version"]:
            newest[doc["_key"]] = doc
    if not newest:
        return result
    batch = list(newest.values())
    try:
        outcomes = [(doc, old) for doc, old in zip(batch, _upsert(db, collection, batch))]
    except ArangoServerError as exc:
        if _transient(exc) or _refused(exc):
            raise
        outcomes = []  # the query wrote nothing: one query per document finds the refused ones
        for doc in batch:
            try:
                outcomes.append((doc, _upsert(db, collection, [doc])[0]))
            except ArangoServerError as single:
                if _transient(single) or _refused(single):
                    raise
                result.errors[doc["_key"]] = f"{collection}/{doc['_key']}: {single.error_message or single}"
    for doc, old_version in outcomes:
        if old_version is None or old_version < doc["version"]:
            result.written += 1
        else:
            result.skipped += 1
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


def lineage_changed(db, collection: str, steps: list[dict]) -> set[str]:
    """Keys of these step documents whose stored document is missing or has other reads/writes."""
    if not steps:
        return set()
    cursor = db.aql.execute("FOR doc IN @@col FILTER doc._key IN @keys RETURN {k: doc._key, r: doc.reads, w: doc.writes}",
                            bind_vars={"@col": collection, "keys": [s["_key"] for s in steps]}, batch_size=len(steps) + 1)
    stored = {row["k"]: (row["r"], row["w"]) for row in cursor}
    return {s["_key"] for s in steps if stored.get(s["_key"]) != (s["reads"], s["writes"])}


def remove_other_edges(db, collection: str, step_keys: list[str], *, keep: list[str], older_than: int) -> set[str]:
    """Remove the edges of these steps except `keep`, if older than `older_than` (a newer writer's
    stay), in one query; returns the data collections the removed edges pointed at."""
    cursor = db.aql.execute(
        "FOR e IN @@col FILTER e.step IN @steps AND e._key NOT IN @keep AND e.version < @version "
        "REMOVE e IN @@col OPTIONS {ignoreErrors: true, exclusive: true} RETURN OLD.collection",
        bind_vars={"@col": collection, "steps": step_keys, "keep": keep, "version": older_than}, batch_size=1000)
    return {name for name in cursor if name}


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


def delete_keys(db, collection: str, keys, *, older_than: int | None = None) -> int:
    """Delete by key in one query; missing keys are fine. With `older_than`, only documents whose
    version is smaller (checked in the same query, so a newer concurrent write survives)."""
    keys = list(keys)
    if not keys:
        return 0
    guard = " AND doc.version < @version" if older_than is not None else ""
    bind_vars = {"@col": collection, "keys": keys, **({"version": older_than} if older_than is not None else {})}
    cursor = db.aql.execute(
        f"FOR doc IN @@col FILTER doc._key IN @keys{guard} REMOVE doc IN @@col OPTIONS {{ignoreErrors: true, exclusive: true}}",
        bind_vars=bind_vars,
    )
    return (cursor.statistics() or {}).get("modified", 0)


# Documents of these rows (`pg_id`), by key; a document written before documents carried `pg_id`
# (null) falls back to the version guard. In AQL terms: pg_id IN ids OR (pg_id == null AND version <
# @version), written with a list holding null and a conditional, the shape the test emulator knows too.
_DELETE_OWNED_AQL = """
FOR doc IN @@col
  FILTER doc.{match} IN @values AND doc.{owner} IN @owners AND (doc.{owner} == null ? doc.version : -1) < @version
  REMOVE doc IN @@col OPTIONS {{ignoreErrors: true, exclusive: true}}
"""


def delete_owned(db, collection: str, values, owners, *, older_than: int, match: str = "_key",
                 owner: str = "pg_id") -> int:
    """Delete the documents whose `match` is one of `values` and whose `owner` attribute names one of
    the rows `owners` (deleted rows' primary keys), in one query; the same key held by another row's
    document by now stays, whatever its version. Documents without the `owner` attribute (written
    before it existed) go only when older than `older_than`."""
    values, owners = sorted(set(values)), sorted(set(owners))
    if not values or not owners:
        return 0
    cursor = db.aql.execute(_DELETE_OWNED_AQL.format(match=match, owner=owner), bind_vars={
        "@col": collection, "values": values, "owners": [*owners, None], "version": older_than})
    return (cursor.statistics() or {}).get("modified", 0)


def attribute_of(db, collection: str, keys: list[str], attribute: str) -> list:
    """The stored value of one attribute of these documents (missing ones left out)."""
    if not keys:
        return []
    cursor = db.aql.execute(f"FOR doc IN @@col FILTER doc._key IN @keys RETURN doc.{attribute}",
                            bind_vars={"@col": collection, "keys": keys}, batch_size=len(keys) + 1)
    return [value for value in cursor if value is not None]


def check_ready(*, timeout: float) -> None:
    """Readiness: the mirror's database answers to its user, or is missing and the user may create
    it (the first drain does). Raises with a reason an operator can act on."""
    base, db, user = settings.ARANGO_URL.rstrip("/"), settings.ARANGO_DB, settings.ARANGO_USER
    auth = (user, settings.ARANGO_PASSWORD or "") if user else None

    def current(name):
        return requests.get(f"{base}/_db/{quote(name, safe='')}/_api/database/current", auth=auth, timeout=timeout)

    response = current(db)
    if response.status_code == 200:
        return
    if response.status_code in (401, 403):
        raise RuntimeError(f"user {user!r} may not access database {db!r} (HTTP {response.status_code}): "
                           "check ARANGO_USER/ARANGO_PASSWORD and grant rw on it")
    if response.status_code == 404 and _error_num(response) == DATABASE_NOT_FOUND:
        if current("_system").status_code == 200:
            return
        raise RuntimeError(f"database {db!r} does not exist and user {user!r} may not create it: "
                           "create it and grant the user rw on it")
    raise RuntimeError(f"HTTP {response.status_code}")


def _error_num(response) -> int | None:
    try:
        return response.json().get("errorNum")
    except ValueError:
        return None
