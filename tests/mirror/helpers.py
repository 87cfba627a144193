"""Compare the mirror with PostgreSQL."""
from __future__ import annotations

from mirror import documents as d
from queues.models import Queue, QueueRequest, TelemetryEvent


def _strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "version"}


def expected_documents() -> dict[str, dict]:
    """What the mirror must hold, computed from PostgreSQL now (versions left out)."""
    expected = {name: {} for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS}
    for queue in Queue.objects.all():
        expected[d.QUEUES][queue.queue_id] = _strip(d.queue_doc(queue, 0))
    for step in QueueRequest.objects.select_related("queue"):
        qid = step.queue.queue_id
        key = f"{qid}__{step.name}"
        expected[d.STEPS][key] = _strip(d.step_doc(step, qid, 0))
        expected[d.QUEUE_STEPS][key] = {"_key": key, "_from": f"queues/{qid}", "_to": f"steps/{key}", "step": key,
                                        "queue_id": qid}
        for name in step.writes():
            expected[d.COLLECTIONS][name] = {"_key": name, "name": name}
            expected[d.STEP_WRITES][f"{key}__{name}"] = {
                "_key": f"{key}__{name}", "_from": f"steps/{key}", "_to": f"collections/{name}", "step": key,
                "collection": name, "queue_id": qid}
        for name in step.reads():
            expected[d.COLLECTIONS][name] = {"_key": name, "name": name}
            expected[d.STEP_READS][f"{name}__{key}"] = {
                "_key": f"{name}__{key}", "_from": f"collections/{name}", "_to": f"steps/{key}", "step": key,
                "collection": name, "queue_id": qid}
    for event in TelemetryEvent.objects.select_related("queue", "step"):
        qid = event.queue.queue_id
        expected[d.TELEMETRY][event.event_key] = _strip(
            d.telemetry_doc(event, qid, event.step.name if event.step_id else None, 0))
    return expected


def assert_mirror_matches_postgres(mirror) -> dict[str, dict]:
    actual = mirror.snapshot()
    expected = expected_documents()
    for name in expected:
        got = {key: _strip(doc) for key, doc in actual[name].items()}
        assert got == expected[name], f"collection {name} differs from PostgreSQL"
        if name != d.COLLECTIONS:
            assert all(isinstance(doc.get("version"), int) for doc in actual[name].values())
    # A few fields spelled out, so the check doesn't only trust the document builders.
    for queue in Queue.objects.all():
        doc = actual[d.QUEUES][queue.queue_id]
        assert (doc["status"], doc["symbol"], doc["payload"]) == (queue.status, queue.symbol, queue.payload)
    for step in QueueRequest.objects.select_related("queue"):
        doc = actual[d.STEPS][f"{step.queue.queue_id}__{step.name}"]
        assert (doc["state"], doc["records_written"], doc["job_name"]) == (step.state, step.records_written,
                                                                           step.job_name)
    return actual
