"""Issue #12 (telemetry ingestion): the queue-events handler decodes each message once. JSON may come
as UTF-16/32 or with a UTF-8 byte-order mark (json.loads reads them from bytes); such an event must be
accepted as before, stored as its canonical JSON (not as a mis-decoded text).

handle_batch is called with the messages' values as the consumer hands them over (only `value()` is
read when nothing is dead-lettered); the database is the real one."""
from __future__ import annotations

import json

import pytest

from consumers.events import handle_batch
from queues.models import TelemetryEvent

pytestmark = pytest.mark.django_db


class Message:
    def __init__(self, value: bytes):
        self._value = value

    def value(self) -> bytes:
        return self._value


@pytest.mark.parametrize("note", ["caf\u00e9", "plain ASCII"])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32-le", "utf-8-sig", "utf-8"])
def test_it_accepts_an_event_in_any_json_encoding(historical_payload, encoding, note):
    """Ingestion fast path (decode once): UTF-16/32 and BOM-prefixed UTF-8 events are accepted and stored."""
    from jobs.services import queue_create

    queue, _ = queue_create(payload={**historical_payload, "queue_id": f"enc-{encoding}-{len(note)}"}, source="api")
    step = queue.steps.order_by("position").first()
    event = {"event": "started", "queue_id": queue.queue_id, "producer": step.telemetry_id, "note": note}
    outcome = handle_batch([Message(json.dumps(event, ensure_ascii=False).encode(encoding))])
    assert (outcome.accepted, outcome.dead_letters) == (1, [])
    assert TelemetryEvent.objects.get(step=step).payload == event
