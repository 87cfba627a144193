"""Reading one telemetry event (DESIGN §6): both field dialects, with bounds on everything.

Every way an event can be unusable raises `InvalidEvent` with a reason that names the field
(`invalid records_written: …`), so the caller refuses that event alone — a 400 over HTTP, a dead
letter on Kafka — and applies the rest. Nothing in here may raise anything else for any input:
one bad event must never fail a batch (issue #10 §1).

`check_json` is the structural part (non-finite numbers, long strings, NUL characters, lone
surrogates, deep nesting) and is shared with the queue-control command parser.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.utils.dateparse import parse_datetime

STATUSES = ("started", "loading", "progress", "interrupted", "error", "finished", "pong")

MAX_EVENT_CHARS = 65_536  # one event as JSON; what a worker reports fits in a fraction of it
MAX_STRING_CHARS = 32_768  # any one string or key (a stack trace in `error_message` fits)
MAX_DEPTH = 10  # objects/arrays inside one another (e.g. `extra`)
BIGINT_MAX = 2**63 - 1  # records_written is a PostgreSQL bigint
MAX_RUN = 2**31 - 1
QUEUE_ID_MAX = 40
_EPOCH_MAX = 253_402_300_800  # year 10000: the inline epoch-seconds path stays below any overflow
PRODUCER_MAX = 100


class InvalidEvent(ValueError):
    """The event cannot be used; the message is the reason (400 body / dead-letter header)."""


@dataclass(slots=True)  # one per event on the hot path: no per-instance __dict__
class Event:
    queue_id: str
    producer: str
    status: str
    raw: dict
    text: str  # the JSON as received, or the canonical JSON of raw
    key: str = ""  # dedupe key; set once the run is known (jobs.telemetry)
    records_written: int | None = None
    message: str = ""
    extra: dict | None = None
    sent_at: datetime | None = None
    run: int | None = None  # as sent by the worker; the step's current run when it sends none
    stale: bool = False  # from an earlier run of the step: stored, not applied
    index: int = -1  # position in the submitted batch
    # Coalesced progress reports (jobs.telemetry_coalesce): one Event for several reports.
    indexes: list[int] | None = None  # positions of all its reports (None: just `index`)
    coalesced: int = 1  # how many reports it stands for
    hashed: str | None = None  # what its key hashes when not `text` (all its reports' texts)


def canonical(raw: dict) -> str:
    """The event as canonical JSON: hashed for the dedupe key and stored as the payload."""
    return json.dumps(raw, sort_keys=True, default=str, separators=(",", ":"))


def event_key(text: str, run: int | None = None) -> str:
    """Content hash; runs after the first are part of it (so keys stored before runs counted stay valid),
    which lets a retried step report the very same body again and have it count for the new run."""
    if run is not None and run > 1:
        text = f"run {run}\n{text}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _check_string(value: str, path: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise InvalidEvent(f"invalid {path}: longer than {MAX_STRING_CHARS} characters")
    if "\x00" in value:  # PostgreSQL text and jsonb cannot hold NUL
        raise InvalidEvent(f"invalid {path}: contains a NUL character (\\u0000)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. "\ud800" from JSON: valid JSON, not storable text
            raise InvalidEvent(f"invalid {path}: not valid Unicode (a lone surrogate)") from None


def check_json(value, path: str = "", depth: int = 0) -> None:
    """Raise InvalidEvent for anything in a decoded JSON value the database or the API cannot hold."""
    here = path or "value"
    if isinstance(value, float):
        if not math.isfinite(value):  # 1e400, NaN and Infinity are what Python's json reads them as
            raise InvalidEvent(f"invalid {here}: not a finite number ({value!r})")
    elif isinstance(value, str):
        _check_string(value, here)
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise InvalidEvent(f"invalid {here}: nested deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_string(key, f"{path}.<key>" if path else "<key>")
                child = f"{path}.{key[:40]}" if path else key[:40]
            else:
                child = f"{here}[{key}]"
            check_json(item, child, depth + 1)


_SCALARS = (str, int, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)


def _plainly_storable(raw: dict, text: str | None) -> bool:
    """True only when `check_json(raw)` cannot raise: a cheap test for the common event (flat, ASCII,
    small), so the full walk runs only for the rest and gives the same verdict with the same reason.

    From the text as received: ASCII without a `\\u` escape decodes to strings with no NUL and no
    surrogate (JSON forbids raw control characters), and a text no longer than MAX_STRING_CHARS holds
    no longer string. Flat values have no depth; floats are the only numbers that can be non-finite.
    """
    # A backslash is looked for first: one memchr, where the two-character search scans slowly.
    if text is None or len(text) > MAX_STRING_CHARS or not text.isascii() or ("\\" in text and "\\u" in text):
        return False
    if _SCALAR_TYPES.issuperset(map(type, raw.values())):  # the usual event: no loop in Python
        return True
    for value in raw.values():
        if type(value) in _SCALARS:
            continue
        if type(value) is float and math.isfinite(value):
            continue
        return False
    return True


def _string(raw: dict, key: str, max_length: int | None = None) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"invalid {key}: must be a string, got {type(value).__name__}")
    if max_length is not None and len(value) > max_length:
        raise InvalidEvent(f"invalid {key}: longer than {max_length} characters")
    return value


def _count(raw: dict) -> int | None:
    key = "records_written" if raw.get("records_written") is not None else "message_count"
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvent(f"invalid {key}: must be a non-negative number, got {_short(value)}")
    count = int(value)
    if not 0 <= count <= BIGINT_MAX:
        raise InvalidEvent(f"invalid {key}: must be between 0 and {BIGINT_MAX}, got {_short(value)}")
    return count


def _run(raw: dict) -> int | None:
    value = raw.get("run")
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit() and len(value) < 12:  # an env var passed on as is
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUN:
        raise InvalidEvent(f"invalid run: must be a positive integer, got {_short(value)}")
    return value


def parse_time(value, key: str) -> datetime | None:
    """Epoch seconds or ISO 8601 (naive means UTC); None when absent. Shared with queue-control."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidEvent(f"invalid {key}: not a finite number")
        try:
            return datetime.fromtimestamp(value, tz=dt_timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"invalid {key}: out of range (epoch seconds expected), got {_short(value)}") from None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value)
        except ValueError:  # well-formed but impossible, e.g. 2024-06-31 or hour 25
            raise InvalidEvent(f"invalid {key}: not a valid date and time: {_short(value)}") from None
        if parsed is None:
            raise InvalidEvent(f"invalid {key}: not ISO 8601 or epoch seconds: {_short(value)}")
        try:
            return parsed.replace(tzinfo=dt_timezone.utc) if parsed.tzinfo is None else parsed.astimezone(dt_timezone.utc)
        except (OverflowError, ValueError):
            raise InvalidEvent(f"invalid {key}: out of range: {_short(value)}") from None
    raise InvalidEvent(f"invalid {key}: must be epoch seconds or an ISO 8601 string, got {type(value).__name__}")


def normalize(raw: object, text: str | None = None) -> Event:
    """Read either field dialect (event/status, producer/telemetry_id, records_written/message_count…).

    `text` is the event's JSON as received (a Kafka message): stored and hashed as is, which saves
    serialising it again on the hot path. Without it the canonical JSON of `raw` is used.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("not a JSON object")
    if text is not None and len(text) > MAX_EVENT_CHARS:
        raise InvalidEvent(f"invalid event: larger than {MAX_EVENT_CHARS} characters")
    if not _plainly_storable(raw, text):
        check_json(raw)  # before anything serialises it: bounded depth, finite numbers, storable strings
    get = raw.get
    # The fields of every event are read inline when they are plain strings (the hot path); anything
    # else goes through _string, which gives the verdict and the reason.
    status = get("event")
    if status is not None and status.__class__ is not str or not status:
        status = _string(raw, "event") or _string(raw, "status")
    finished = get("finished")
    if finished is not None and not isinstance(finished, bool):
        raise InvalidEvent(f"invalid finished: must be true or false, got {_short(finished)}")
    if not status and finished is True:
        status = "finished"
    if status not in STATUSES:  # exact spellings first; other cases are lowered below
        if not status or status.lower() not in STATUSES:
            raise InvalidEvent(f"unknown or missing status {_short(status)}")
        status = status.lower()
    if status == "progress" and finished is True:
        status = "finished"
    queue_id = get("queue_id")
    if queue_id.__class__ is not str or len(queue_id) > QUEUE_ID_MAX:
        queue_id = _string(raw, "queue_id", QUEUE_ID_MAX)
    if not queue_id:
        raise InvalidEvent("missing queue_id")
    producer = get("producer")
    if producer.__class__ is not str or len(producer) > PRODUCER_MAX or not producer:
        producer = _string(raw, "producer", PRODUCER_MAX) or _string(raw, "telemetry_id", PRODUCER_MAX) or ""
    if not producer and status != "pong":
        raise InvalidEvent("missing producer/telemetry_id")
    records = get("records_written")
    if records.__class__ is not int or not 0 <= records <= BIGINT_MAX:
        records = _count(raw)
    message = get("error_message")
    if message.__class__ is not str or not message:
        if message is None and get("message").__class__ is str:
            message = get("message")
        else:
            message = _string(raw, "error_message") or _string(raw, "message") or ""
    extra = get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise InvalidEvent(f"invalid extra: must be an object, got {type(extra).__name__}")
    timestamp, sent = get("timestamp"), get("sent_at")
    if sent is None and timestamp.__class__ is int and 0 <= timestamp < _EPOCH_MAX:
        sent_at = datetime.fromtimestamp(timestamp, tz=dt_timezone.utc)
    else:
        times = [parse_time(timestamp, "timestamp"), parse_time(sent, "sent_at")]  # both checked when both sent
        sent_at = times[0] or times[1]
    run = get("run")
    if run is not None:
        run = _run(raw)
    if text is None:
        text = canonical(raw)
        if len(text) > MAX_EVENT_CHARS:
            raise InvalidEvent(f"invalid event: larger than {MAX_EVENT_CHARS} characters")
    # Positional, in the field order of Event (a third of the cost of keywords, once per event):
    # queue_id, producer, status, raw, text, key, records_written, message, extra, sent_at, run.
    return Event(queue_id, producer, status, raw, text, "", records, message[:2000], extra, sent_at, run)
