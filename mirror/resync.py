"""Rebuild the whole mirror from PostgreSQL (a service; `manage.py arango_resync` calls it).

Beside drains: its version is taken before it reads, so a drain's newer documents win, and it
removes only documents older than itself that PostgreSQL does not have.
"""
from __future__ import annotations

from collections import defaultdict

from django.db.models import Q

from mirror import arango
from mirror import documents as d
from mirror.sync import Batch, _events, _note, _steps, next_version, write_batch


def mirror_resync(*, truncate: bool = False, chunk_size: int = 500) -> dict[str, int]:
    """Rebuild the mirror from PostgreSQL: write everything, remove documents PostgreSQL doesn't have."""
    from queues.models import Queue, TelemetryEvent

    arango.forget_schema()  # someone may have dropped collections by hand: check them again
    with arango.unavailable_on_network_errors():
        db = arango.connect()
        if truncate:
            for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS:
                db.collection(name).truncate()
        version = next_version()  # taken before reading: any later change gets a larger version
        seen: dict[str, set] = defaultdict(set)
        errors: list[str] = []

        def flush(batch: Batch) -> None:
            errors.extend(write_batch(db, batch, relink_all=True).values())
            for (collection, key) in batch.owners:
                seen[collection].add(key)

        queue_ids = list(Queue.objects.order_by("pk").values_list("pk", flat=True))
        for start in range(0, len(queue_ids), chunk_size):
            batch = Batch(version)
            for queue in Queue.objects.filter(pk__in=queue_ids[start:start + chunk_size]):
                batch.add_queue(queue)
            for step in _steps(Q(queue_id__in=queue_ids[start:start + chunk_size])):
                batch.add_step(step)
            flush(batch)
        event_ids = list(TelemetryEvent.objects.order_by("pk").values_list("pk", flat=True))
        for start in range(0, len(event_ids), chunk_size):
            batch = Batch(version)
            for event in _events(Q(pk__in=event_ids[start:start + chunk_size])):
                batch.add_event(event)
            flush(batch)
        removed = 0
        for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS:
            # Older than this resync and unknown to PostgreSQL; newer ones came from a concurrent drain.
            orphans = [doc["_key"] for doc in arango.all_documents(db, name)
                       if doc["_key"] not in seen[name] and (doc.get("version") or 0) < version]
            removed += arango.delete_keys(db, name, orphans, older_than=version)
    counts = {name: len(seen[name]) for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS}
    counts.update(removed=removed, errors=len(errors))
    if errors:
        _note(error=f"resync: {errors[0]}")
    return counts
