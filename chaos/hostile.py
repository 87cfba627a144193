"""A seeded generator of hostile messages for `queue-control` and `queue-events`, each with its verdict.

Every message comes with what the contract (DESIGN §6, README *Dead letters*) says must happen to
it: `invalid` (dead-lettered with a reason, nothing applied) or `valid` (applied; for telemetry its
`chaos_id` must be stored exactly once — a plain progress report may instead be coalesced with the
step's others of its batch (README *Event history*) — and its `records_written` counted). The verdicts are written
from the contract, not from the product's code. Same seed, same messages.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    key: str
    value: bytes
    verdict: str  # "valid" | "invalid"
    kind: str  # the generator that made it (for the report)
    chaos_id: str = ""  # valid telemetry: its identity in the database
    queue_id: str = ""
    producer: str = ""
    records: int | None = None
    status: str = ""  # valid telemetry: its status (plain progress reports may be coalesced)
    command_id: str = ""
    command: str = ""


def _dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _nest(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"x": value}
    return value


IMPOSSIBLE_DATES = ["2024-02-30T00:00:00", "2024-13-01T00:00:00", "2024-06-31T25:61:00", "0000-00-00", "2024-06-01T24:00:99"]
BAD_BYTES = [b"\xff\xfe{\"event\":1}", b"{\"queue_id\":\"\xc3\x28\"}", b"\x80\x81\x82", b"{\"a\":\"\xed\xa0\x80\"}", b""]
# Values of the wrong type per field (None would mean "absent", which is allowed for most of them).
WRONG_TYPES = {
    "records_written": [[], "text", {"a": 1}, "12"],
    "queue_id": [[], 5, {"a": 1}, True],
    "producer": [[], 5, {"a": 1}],
    "timestamp": [[], {"a": 1}, "yesterday", True],
    "finished": ["yes", 1, [], {"a": 1}],
}


class Generator:
    """Messages over the steps it is given: [(queue_id, telemetry_id)]."""

    def __init__(self, seed: int, steps: list[tuple[str, str]], *, prefix: str = "m"):
        self.rng = random.Random(seed)
        self.steps = steps
        self.prefix = prefix
        self.count = 0
        self.sent_valid_events: list[Message] = []
        self.sent_valid_commands: list[Message] = []

    def _key(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}"

    # -- queue-events ---------------------------------------------------------------------------
    def valid_event(self) -> Message:
        rng = self.rng
        queue_id, producer = rng.choice(self.steps)
        key = self._key()
        records = rng.randrange(0, 10**9)
        status = rng.choice(["started", "loading", "progress"])
        if rng.random() < 0.5:  # the dialect of the original workers
            body = {"event": status, "queue_id": queue_id, "producer": producer, "records_written": records,
                    "timestamp": 1_700_000_000 + rng.random() * 10**7}
        else:  # the other dialect (DESIGN §6), with unknown fields that must be kept
            body = {"status": status, "queue_id": queue_id, "telemetry_id": producer, "message_count": records,
                    "sent_at": "2024-06-01T12:00:00Z", "extra": {"epoch": rng.randrange(100)}, "unknown_field": [1, "x"]}
        body["chaos_id"] = key
        message = Message(key, _dumps(body), "valid", "valid", chaos_id=key, queue_id=queue_id, producer=producer,
                          records=records, status=status)
        self.sent_valid_events.append(message)
        return message

    def replayed_event(self) -> Message | None:
        """The very bytes of an earlier valid event, again (at-least-once delivery): valid, counts once."""
        if not self.sent_valid_events:
            return None
        original = self.rng.choice(self.sent_valid_events)
        return Message(self._key(), original.value, "valid", "replay")

    def hostile_event(self) -> Message:
        rng = self.rng
        queue_id, producer = rng.choice(self.steps)
        base = {"event": "loading", "queue_id": queue_id, "producer": producer, "records_written": 1}
        kind = rng.choice(["bad_bytes", "not_object", "wrong_type", "huge_number", "non_finite", "negative",
                           "impossible_date", "deep_nesting", "unknown_queue", "unknown_producer", "no_status",
                           "bad_status", "no_queue", "long_queue_id", "extra_not_object", "nul", "bool_count"])
        body: object = dict(base)
        raw: bytes | None = None
        if kind == "bad_bytes":
            raw = rng.choice(BAD_BYTES)
        elif kind == "not_object":
            body = rng.choice([[base], "loading", 42, None, True])
        elif kind == "wrong_type":
            name = rng.choice(sorted(WRONG_TYPES))
            body[name] = rng.choice(WRONG_TYPES[name])
        elif kind == "huge_number":
            body["records_written"] = rng.choice([2**63, 10**30, 2**64 + 5])
        elif kind == "non_finite":
            body[rng.choice(["records_written", "timestamp", "sent_at"])] = rng.choice(
                [float("nan"), float("inf"), float("-inf")])
        elif kind == "negative":
            body["records_written"] = -rng.randrange(1, 10**6)
        elif kind == "impossible_date":
            body[rng.choice(["timestamp", "sent_at"])] = rng.choice(IMPOSSIBLE_DATES + [10**20, -10**20])
        elif kind == "deep_nesting":
            body["extra"] = _nest(rng.randrange(12, 400))
        elif kind == "unknown_queue":
            body["queue_id"] = f"no-such-queue-{rng.randrange(10**9)}"
        elif kind == "unknown_producer":
            body["producer"] = f"loader-producer__nobody{rng.randrange(10**6)}"
        elif kind == "no_status":
            body.pop("event")
        elif kind == "bad_status":
            body["event"] = rng.choice(["exploded", "", "LOADINGX", "🙂"])
        elif kind == "no_queue":
            body.pop("queue_id")
        elif kind == "long_queue_id":
            body["queue_id"] = "q" * rng.randrange(41, 5000)
        elif kind == "extra_not_object":
            body["extra"] = rng.choice([[1, 2], "x", 3])
        elif kind == "nul":
            body["message"] = "bad\x00byte"
        elif kind == "bool_count":
            body["records_written"] = True
        if raw is None:
            raw = _dumps(body)
        return Message(self._key(), raw, "invalid", kind)

    # -- queue-control --------------------------------------------------------------------------
    def valid_command(self, queue_ids: list[str]) -> Message:
        rng = self.rng
        key = self._key()
        command_id = f"{self.prefix}-cmd-{self.count}"
        command = rng.choice(["ping", "ping", "stop"]) if queue_ids else "ping"
        body: dict = {"command": command, "command_id": command_id, "timestamp": 1_700_000_000}
        if command == "stop":
            body["queue_id"] = rng.choice(queue_ids)
        message = Message(key, _dumps(body), "valid", "valid", command_id=command_id, command=command)
        self.sent_valid_commands.append(message)
        return message

    def replayed_command(self) -> Message | None:
        """An earlier command with the same command_id: valid (acknowledged as a duplicate), acts once."""
        if not self.sent_valid_commands:
            return None
        original = self.rng.choice(self.sent_valid_commands)
        return Message(self._key(), original.value, "valid", "replay")

    def hostile_command(self) -> Message:
        rng = self.rng
        command_id = f"{self.prefix}-bad-{self.count + 1}"
        base: dict = {"command": "ping", "command_id": command_id}
        kind = rng.choice(["bad_bytes", "not_object", "unknown_command", "command_type", "non_finite", "impossible_date",
                           "deep_nesting", "queue_id_type", "command_id_type", "long_command_id", "nul", "timestamp_type"])
        body: object = dict(base)
        raw: bytes | None = None
        if kind == "bad_bytes":
            raw = rng.choice(BAD_BYTES)
        elif kind == "not_object":
            body = rng.choice([[base], "start", 7, None])
        elif kind == "unknown_command":
            body["command"] = rng.choice(["launch", "delete", "", "STOPX", "drop table"])
        elif kind == "command_type":
            body["command"] = rng.choice([1, [], {"x": 1}, None, True])
        elif kind == "non_finite":
            body["whatever"] = rng.choice([float("nan"), float("inf"), float("-inf")])
        elif kind == "impossible_date":
            body["timestamp"] = rng.choice(IMPOSSIBLE_DATES + [1e300])
        elif kind == "deep_nesting":
            body["payload"] = _nest(rng.randrange(12, 400))
        elif kind == "queue_id_type":
            body["queue_id"] = rng.choice([1, [], {"a": "b"}, 2.5])
        elif kind == "command_id_type":
            body["command_id"] = rng.choice([[], {"a": 1}, 1.5])
        elif kind == "long_command_id":
            body["command_id"] = "c" * rng.randrange(201, 3000)
        elif kind == "nul":
            body["note"] = "a\x00b"
        elif kind == "timestamp_type":
            body["timestamp"] = rng.choice([[], {"t": 1}, True])
        if raw is None:
            raw = _dumps(body)
        return Message(self._key(), raw, "invalid", kind)
