"""PostgreSQL rows → ArangoDB documents and lineage edges (pure functions, no I/O).

Keys: queues by queue_id, steps by `{queue_id}__{step name}`, telemetry by event_key, data
collections by their name; all made safe for ArangoDB's key alphabet by `safe_key`. Every document
carries `version`, the drain's batch version, which the writer compares so an older state never
replaces a newer one, and `pg_id`, the primary key of its row: a key can pass to another row (a queue
deleted and re-created with its queue_id), so a delete removes the documents of the deleted row's
`pg_id`, never whatever holds the key by then. Telemetry also carries its queue's row (`queue_pg_id`).
"""
from __future__ import annotations

import hashlib
import re

QUEUES, STEPS, TELEMETRY, COLLECTIONS = "queues", "steps", "telemetry", "collections"
QUEUE_STEPS, STEP_READS, STEP_WRITES = "queue_steps", "step_reads", "step_writes"
VERTEX_COLLECTIONS = (QUEUES, STEPS, TELEMETRY, COLLECTIONS)
EDGE_COLLECTIONS = (QUEUE_STEPS, STEP_READS, STEP_WRITES)
GRAPH = "lineage"
EDGE_DEFINITIONS = [
    {"edge_collection": QUEUE_STEPS, "from_vertex_collections": [QUEUES], "to_vertex_collections": [STEPS]},
    {"edge_collection": STEP_WRITES, "from_vertex_collections": [STEPS], "to_vertex_collections": [COLLECTIONS]},
    {"edge_collection": STEP_READS, "from_vertex_collections": [COLLECTIONS], "to_vertex_collections": [STEPS]},
]

# ArangoDB allows these in a _key; '%' is allowed too but we keep keys URL-safe without escaping.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-:.@()+,=;$!*']")
_KEY_MAX = 254


def safe_key(value: str) -> str:
    """A valid, deterministic ArangoDB key; a short hash keeps altered or long keys unique."""
    key = _UNSAFE.sub("_", value)
    if key == value and 0 < len(key) <= _KEY_MAX:
        return key
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    return f"{key[: _KEY_MAX - len(digest) - 1]}-{digest}"


def queue_key(queue_id: str) -> str:
    return safe_key(queue_id)


def step_key(queue_id: str, step_name: str) -> str:
    return safe_key(f"{queue_id}__{step_name}")


def collection_key(name: str) -> str:
    return safe_key(name)


def kind_and_key(instance) -> tuple[str, str]:
    from queues.models import Queue, QueueRequest, TelemetryEvent

    if isinstance(instance, Queue):
        return "queue", queue_key(instance.queue_id)
    if isinstance(instance, QueueRequest):
        return "step", step_key(instance.queue.queue_id, instance.name)
    if isinstance(instance, TelemetryEvent):
        return "telemetry", safe_key(instance.event_key)
    raise TypeError(f"not a mirrored model: {type(instance).__name__}")


def _iso(value):
    return value.isoformat() if value is not None else None


def queue_doc(queue, version: int) -> dict:
    return {
        "_key": queue_key(queue.queue_id),
        "pg_id": queue.pk,
        "queue_id": queue.queue_id,
        "status": queue.status,
        "symbol": queue.symbol,
        "time_range": queue.time_range,
        "time_range_start": _iso(queue.time_range_start),
        "time_range_end": _iso(queue.time_range_end),
        "payload": queue.payload,
        "message": queue.message,
        "warnings": queue.warnings,
        "source": queue.source,
        "stop_requested_at": _iso(queue.stop_requested_at),
        "created_at": _iso(queue.created_at),
        "updated_at": _iso(queue.updated_at),
        "started_at": _iso(queue.started_at),
        "finished_at": _iso(queue.finished_at),
        "version": version,
    }


# The step columns `step_doc`/`step_edges` read (plus the queue, and the lineage fields of the
# catalogue): the drain loads only these, not the step's logs, params or launcher handle.
STEP_DOC_FIELDS = ("queue", "name", "position", "target", "type", "streaming", "state", "reported_status",
                   "records_written", "job_name", "telemetry_id", "kafka_topic", "message", "launch_attempts",
                   "stop_requested_at", "launched_at", "started_at", "finished_at", "last_event_at",
                   "state_changed_at", "created_at", "updated_at")


def step_fields() -> tuple[str, ...]:
    from queues.catalogue import TARGETS

    lineage = {f for target in TARGETS.values() for f in target.reads + target.writes}
    return STEP_DOC_FIELDS + tuple(sorted(lineage))


def step_doc(step, queue_id: str, version: int) -> dict:
    return {
        "_key": step_key(queue_id, step.name),
        "pg_id": step.pk,
        "queue_id": queue_id,
        "name": step.name,
        "position": step.position,
        "target": step.target,
        "type": step.type,
        "streaming": step.streaming,
        "state": step.state,
        "reported_status": step.reported_status,
        "records_written": step.records_written,
        "job_name": step.job_name,
        "telemetry_id": step.telemetry_id,
        "kafka_topic": step.kafka_topic,
        "reads": step.reads(),
        "writes": step.writes(),
        "message": step.message,
        "launch_attempts": step.launch_attempts,
        "stop_requested_at": _iso(step.stop_requested_at),
        "launched_at": _iso(step.launched_at),
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
        "last_event_at": _iso(step.last_event_at),
        "state_changed_at": _iso(step.state_changed_at),
        "created_at": _iso(step.created_at),
        "updated_at": _iso(step.updated_at),
        "version": version,
    }


def telemetry_doc(event, queue_id: str, step_name: str | None, version: int) -> dict:
    return {
        "_key": safe_key(event.event_key),
        "pg_id": event.pk,
        "queue_id": queue_id,
        "queue_pg_id": event.queue_id,  # the queue's row: its documents go with it, whatever its key
        "step": step_key(queue_id, step_name) if step_name else None,
        "status": event.status,
        "producer": event.producer,
        "records_written": event.records_written,
        "message": event.message,
        "payload": event.payload,
        "source": event.source,
        "sent_at": _iso(event.sent_at),
        "received_at": _iso(event.received_at),
        "coalesced": event.coalesced,  # > 1: that many plain progress reports of one batch
        "version": version,
    }


def collection_doc(name: str) -> dict:
    return {"_key": collection_key(name), "name": name}


def step_edges(step, queue_id: str, version: int) -> dict[str, list[dict]]:
    """The step's lineage edges by edge collection: queue→step, step→written, read→step."""
    skey = step_key(queue_id, step.name)
    sid = f"{STEPS}/{skey}"
    edges = {
        QUEUE_STEPS: [{"_key": skey, "_from": f"{QUEUES}/{queue_key(queue_id)}", "_to": sid, "step": skey,
                       "queue_id": queue_id, "version": version}],
        STEP_WRITES: [],
        STEP_READS: [],
    }
    for name in dict.fromkeys(step.writes()):
        ckey = collection_key(name)
        edges[STEP_WRITES].append({"_key": safe_key(f"{skey}__{ckey}"), "_from": sid, "_to": f"{COLLECTIONS}/{ckey}",
                                   "step": skey, "collection": name, "queue_id": queue_id, "version": version})
    for name in dict.fromkeys(step.reads()):
        ckey = collection_key(name)
        edges[STEP_READS].append({"_key": safe_key(f"{ckey}__{skey}"), "_from": f"{COLLECTIONS}/{ckey}", "_to": sid,
                                  "step": skey, "collection": name, "queue_id": queue_id, "version": version})
    return edges
