"""Issue #12 (telemetry ingestion): the cheap test that lets a common event skip the full structural
JSON walk must give the very verdicts of the full walk. Each event is read from its Kafka text (as
the consumer passes it) once as shipped and once with the cheap test disabled: same acceptance, same
reason. Written with and without `ensure_ascii`, so escapes (\\u0000, \\ud800) and raw UTF-8 both occur."""
from __future__ import annotations

import json

import pytest

from jobs import telemetry_input
from jobs.telemetry_input import InvalidEvent, normalize

BASE = {"event": "loading", "queue_id": "tel-q", "producer": "loader-producer__api_candles_5m",
        "records_written": 5, "timestamp": 1717200000, "message": "loading candles"}

CASES = [
    {},  # the common event: accepted both ways
    {"message": "bad \u0000 byte"},
    {"note": "lone \ud800 surrogate"},
    {"note": "caf\u00e9 \u2603"},  # storable non-ASCII
    {"records_written": float("nan")},
    {"records_written": float("inf")},
    {"ratio": float("-inf")},
    {"ratio": 0.5},
    {"message": "x" * 40_000},
    {"shard": "y" * 40_000},
    {"extra": {"loss": float("nan")}},
    {"extra": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": 1}}}}}}}}}}}},
    {"tags": ["a", "b\u0000"]},
    {"back\\slash": "\\u0000 written out, not an escape"},
    {"\u0000key": 1},
]


def _verdict(raw: dict, text: str) -> str:
    try:
        event = normalize(raw, text)
    except InvalidEvent as exc:
        return f"refused: {exc}"
    return f"accepted: {event.status} {event.records_written}"


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("fields", CASES)
def test_the_cheap_test_gives_the_verdicts_of_the_full_check(fields, ensure_ascii, monkeypatch):
    """Ingestion fast path: identical verdicts and reasons with and without the cheap test."""
    raw = {**BASE, **fields}
    text = json.dumps(raw, ensure_ascii=ensure_ascii)
    decoded = json.loads(text)
    shipped = _verdict(decoded, text)
    monkeypatch.setattr(telemetry_input, "_plainly_storable", lambda raw, text: False)
    assert shipped == _verdict(json.loads(text), text)


def test_the_cheap_test_vouches_for_the_common_event_only():
    """Ingestion fast path: it is taken for a flat ASCII event and declined for anything it cannot judge."""
    text = json.dumps(BASE)
    assert telemetry_input._plainly_storable(json.loads(text), text)
    for fields in CASES[1:]:
        raw = {**BASE, **fields}
        text = json.dumps(raw)
        if fields in ({"ratio": 0.5},):
            assert telemetry_input._plainly_storable(json.loads(text), text)
        else:
            assert not telemetry_input._plainly_storable(json.loads(text), text), fields
