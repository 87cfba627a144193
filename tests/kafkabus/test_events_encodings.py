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
    from jobs.submission import queue_create

    queue, _ = queue_create(payload={**historical_payload, "queue_id": f"enc-{encoding}-{len(note)}"}, source="api")
    step = queue.steps.order_by("position").first()
    event = {"event": "started", "queue_id": queue.queue_id, "producer": step.telemetry_id, "note": note}
    outcome = handle_batch([Message(json.dumps(event, ensure_ascii=False).encode(encoding))])
    assert (outcome.accepted, outcome.dead_letters) == (1, [])
    assert TelemetryEvent.objects.get(step=step).payload == event


# Values at the edges of what json.loads reads as an object: whitespace around it, data after it,
# a BOM, NULs, non-finite constants, deep nesting, not UTF-8, not an object, nothing at all.
EDGE_VALUES = [
    b'{"a": 1}', b' {"a": 1}', b'{"a": 1}\n', b'\t{"a": 1} \r\n', b'{"a": 1} x', b'{"a": 1}{"b": 2}',
    b'{"a": 1}\x00', b'\x00{"a": 1}', b'{"a": "x\x00"}', b'{"a": NaN, "b": -Infinity}', b'{"a": 1e400}',
    b'\xef\xbb\xbf{"a": 1}', b'\xef\xbb\xbf', b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\\ud800"}',
    b'[' * 100_000 + b']' * 100_000, b'{"a":' * 5000 + b'1' + b'}' * 5000, b'[{"a": 1}]', b'"{}"', b'1', b'null',
    b'', b' ', b'{', b'{"a": 1', b'{"a": 1,}', b"{'a': 1}", b'{"a"\n: 1}', b'{"a": 1}' + b' ' * 1000,
]


def _reference(value: bytes) -> tuple[bool, str]:
    """What a message's decode must come to: json.loads of the bytes (as parse() words its reasons)."""
    from consumers.events import parse

    data, reason = parse(value)
    return data is not None, reason


@pytest.mark.django_db(databases=[])
def test_prepare_decides_each_edge_value_as_json_loads_does():
    """Ingestion fast path (decode once, the C scanner called directly): every value at the edges of
    JSON — whitespace around the object, data after it, a BOM, NULs, non-finite numbers, deep nesting,
    bytes that are not UTF-8 — is accepted or dead-lettered with the very reason json.loads gives."""
    from consumers.events import prepare_batch

    prepared = prepare_batch([Message(value) for value in EDGE_VALUES])
    letters = dict(prepared.letters)
    got = [(position not in letters, letters.get(position, "")) for position in range(len(EDGE_VALUES))]
    assert got == [_reference(value) for value in EDGE_VALUES]
    assert sorted(prepared.positions + list(letters)) == list(range(len(EDGE_VALUES)))
