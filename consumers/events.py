"""queue-events: a batch of Kafka messages → `jobs.telemetry.ingest_events` in one transaction.

Messages the manager published itself (acks, pongs: `origin` = queue-manager, nothing else) are
skipped. Not JSON, not an object, and everything `ingest_events` rejects (no queue, unknown queue,
unknown producer, bad status, a malformed field…) go to the dead-letter topic with the reason and
the original bytes. The dead letters are confirmed before the batch's offsets are stored (by the
caller, BatchConsumer, which also isolates a message whose handling raises).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from django.conf import settings

from jobs.telemetry import PreparedEvents, ingest_apply, ingest_prepare
from kafkabus.config import ORIGIN
from kafkabus.deadletter import send_dead_letters

logger = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    accepted: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead_letters: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)


def parse(value) -> tuple[dict | None, str]:
    """Decode one message value; returns (object, "") or (None, reason)."""
    try:
        data = json.loads(value)
    except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"not JSON: {exc}"[:300]
    except RecursionError:  # arrays/objects nested deeper than the decoder can follow
        return None, "not JSON: nested too deeply to decode"
    if not isinstance(data, dict):
        return None, f"not a JSON object but {type(data).__name__}"
    return data, ""


# json.loads's own decoder (strict, NaN and Infinity read as floats): its scanner reads one value at
# an offset and returns (value, end), raising StopIteration when no value starts there.
_SCAN = json.decoder.JSONDecoder().scan_once


def _decode(value) -> tuple[dict | None, str | None, str]:
    """(object, text as received or None, reason) for a message the inline path of prepare_batch
    did not read: not UTF-8, not JSON, not an object, or JSON in another encoding.

    A NUL or a BOM means UTF-16/32 (whose ASCII also decodes as UTF-8, NULs and all) or a UTF-8 BOM:
    those are read from the bytes and stored as canonical JSON (text None), never as the mis-decoded
    text. Neither can be in a text the scanner read whole (a raw NUL is not JSON, no value starts with a BOM), so
    prepare_batch looks for them only here."""
    try:
        text = value.decode("utf-8")
    except (AttributeError, UnicodeDecodeError):
        text = None
    if text is not None and ("\x00" in text or text.startswith("\ufeff")):
        text = None
    data, reason = parse(value if text is None else text)
    return data, text, reason


@dataclass
class PreparedBatch:
    """A batch read and validated (prepare_batch), waiting for its database part (apply_batch)."""

    messages: list
    outcome: BatchOutcome
    letters: list[tuple[int, str]]
    positions: list[int]
    events: PreparedEvents | None


def handle_batch(messages: list) -> BatchOutcome:
    return apply_batch(prepare_batch(messages))


def prepare_batch(messages: list) -> PreparedBatch:
    """Decode, skip our own messages, validate and group: no database, no network (the consumer runs
    it for the next batch while apply_batch writes the previous one)."""
    outcome = BatchOutcome()
    raws: list[dict] = []
    texts: list[str | None] = []
    positions: list[int] = []
    letters: list[tuple[int, str]] = []
    scan = _SCAN
    own = ORIGIN
    position = -1
    # One pass, no call per message but value(), decode and the scan (issue #12): the text is decoded
    # once (json.loads(bytes) would sniff the encoding and decode again) and read by json's C scanner
    # directly (json.loads wraps it in three Python calls and two regex matches, ~0.5 µs). A value
    # that fills the text exactly is what json.loads reads too; anything else (whitespace around it,
    # data after it, a BOM, not UTF-8, not an object) is read again by _decode, for its verdict and reason.
    for message in messages:
        position += 1
        value = message.value()
        try:
            text = value.decode()
            data, end = scan(text, 0)
            if end != len(text):
                data = None
        except (AttributeError, ValueError, RecursionError, StopIteration):  # UnicodeDecodeError is a ValueError
            data = None
        if data.__class__ is not dict:
            data, text, reason = _decode(value)
            if data is None:
                letters.append((position, reason))
                continue
        if "origin" in data and data["origin"] == own:  # is_own_message, inline: most events have no origin
            outcome.skipped += 1
            continue
        raws.append(data)
        texts.append(text)
        positions.append(position)
    # The texts are stored as received.
    events = ingest_prepare(raws, texts) if raws else None
    return PreparedBatch(messages, outcome, letters, positions, events)


def apply_batch(prepared: PreparedBatch) -> BatchOutcome:
    """One transaction (committed when ingest_apply returns), then the dead letters, confirmed."""
    outcome, letters, positions = prepared.outcome, prepared.letters, prepared.positions
    if prepared.events is not None:
        result = ingest_apply(prepared.events, source="kafka")
        outcome.accepted, outcome.duplicates = result.accepted, result.duplicates
        letters.extend((positions[index], reason) for index, reason in result.rejected)
    letters.sort()
    messages = prepared.messages
    send_dead_letters([(messages[position], reason) for position, reason in letters])
    outcome.dead_letters = letters
    return outcome


def run(*, until=None, on_stall=None, batch_size: int | None = None, install_signals: bool = True, config: dict | None = None):
    """The consume_queue_events loop (also used in-process by the benchmark)."""
    from kafkabus.consumer import BatchConsumer

    def apply(prepared):
        outcome = apply_batch(prepared)
        logger.debug(
            "events batch", extra={"messages": len(prepared.messages), "accepted": outcome.accepted,
                                   "duplicates": outcome.duplicates, "dead_letters": len(outcome.dead_letters)}
        )

    # prepare/apply: the next batch is read and validated while the previous one is written (#12).
    consumer = BatchConsumer(
        name="queue-events",
        topics=[settings.QUEUE_EVENTS_TOPIC],
        prepare=prepare_batch,
        apply=apply,
        batch_size=batch_size,
        config=config,
        on_stall=on_stall,
        create_topics=[settings.QUEUE_EVENTS_TOPIC, settings.QUEUE_EVENTS_DLQ_TOPIC],
    )
    if install_signals:
        consumer.install_signal_handlers()
    consumer.run(until=until)
    return consumer
