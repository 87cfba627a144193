"""Remove the documents of rows deleted in PostgreSQL (the drain's deletes; a service the drain calls).

A delete addresses the deleted ROW (`pg_id` on every document, `queue_pg_id` on telemetry), not the
key: a key can belong to another row by now (a queue deleted and re-created with its queue_id), and
a delete can arrive late (a slow drain) or come back after a dead drain's lease, with a version newer
than the new row's documents. HTTP only; no database access.
"""
from __future__ import annotations

from mirror import arango
from mirror import documents as d
from mirror.models import EntityKind


def delete_entities(db, deleted: dict[str, list[tuple[str, int]]], *, version: int) -> None:
    """Remove documents of rows gone from PostgreSQL (kind -> (doc key, primary key)), with a step's edges.

    Another row's document under the same key stays whatever its version. A deleted queue's telemetry
    goes by `queue_pg_id` (its key may be rewritten by `safe_key`; telemetry stores the queue_id as is).
    Documents from before `pg_id` existed fall back to the version guard (only those older than this
    batch go)."""
    queues = deleted.get(EntityKind.QUEUE, [])
    if queues:
        queue_pks, queue_keys = [pk for _, pk in queues], [key for key, _ in queues]
        # Telemetry first: the fallback finds the queue_id as written on the queue's document.
        arango.delete_owned(db, d.TELEMETRY, queue_pks, queue_pks, older_than=version, match="queue_pg_id",
                            owner="queue_pg_id")
        written_ids = set(arango.attribute_of(db, d.QUEUES, queue_keys, "queue_id")) | set(queue_keys)
        arango.delete_owned(db, d.TELEMETRY, written_ids, queue_pks, older_than=version, match="queue_id",
                            owner="queue_pg_id")
        arango.delete_owned(db, d.QUEUES, queue_keys, queue_pks, older_than=version)
    for kind, collection in ((EntityKind.TELEMETRY, d.TELEMETRY), (EntityKind.STEP, d.STEPS)):
        gone = deleted.get(kind, [])
        arango.delete_owned(db, collection, [key for key, _ in gone], [pk for _, pk in gone], older_than=version)
    gone_steps = [key for key, _ in deleted.get(EntityKind.STEP, [])]
    # A step document that stayed is the new owner's, and so is its lineage, even when older (a step
    # whose reads/writes did not change is not relinked): only a removed step's edges go.
    step_keys = set(gone_steps) - set(arango.keys_where(db, d.STEPS, "_key", gone_steps))
    unlinked = set()
    for collection in d.EDGE_COLLECTIONS:
        edges = [e for e in arango.edges_of_steps(db, collection, sorted(step_keys)) if e.get("version", 0) < version]
        arango.delete_keys(db, collection, [e["_key"] for e in edges], older_than=version)
        unlinked.update(e["collection"] for e in edges if e.get("collection"))
    prune_collections(db, unlinked)


def prune_collections(db, names: set[str]) -> None:
    """Drop data-collection vertices no step reads or writes any more (they come from steps only)."""
    if not names:
        return
    linked = set()
    for collection in (d.STEP_READS, d.STEP_WRITES):
        linked.update(arango.linked_collections(db, collection, sorted(names)))
    arango.delete_keys(db, d.COLLECTIONS, [d.collection_key(n) for n in names - linked])
