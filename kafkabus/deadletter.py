"""Dead letters: a message we cannot use goes to `<topic>-dlq` unchanged, with the reason in headers.

Format: the value and key are the ORIGINAL bytes (so the message can be replayed as is); headers
`dlq.reason` (human-readable), `dlq.reason_class` (short, bounded: not_json, not_object, …),
`dlq.topic`, `dlq.partition`, `dlq.offset` (where it came from) and `dlq.consumer` (group id).
"""
from __future__ import annotations

import logging
import re

from django.conf import settings

from kafkabus.publisher import Outgoing, send_confirmed
from kafkabus.signals import dead_lettered

logger = logging.getLogger(__name__)

_CLASSES = (
    ("not JSON", "not_json"),
    ("not a JSON object", "not_object"),
    ("missing queue_id", "no_queue"),
    ("unknown queue", "unknown_queue"),
    ("missing producer", "no_producer"),
    ("unknown producer", "unknown_producer"),
    ("unknown or missing status", "bad_status"),
    ("records_written", "bad_records"),
    ("invalid records_written", "bad_records"),
    ("invalid message_count", "bad_records"),
    ("invalid ", "invalid_field"),  # "invalid <field>: …" (bounded: the field stays in dlq.reason)
    ("unknown command", "unknown_command"),
    ("internal error", "internal_error"),
)


def reason_class(reason: str) -> str:
    for prefix, name in _CLASSES:
        if reason.startswith(prefix):
            return name
    return re.sub(r"[^a-z_]+", "_", reason.lower().split(":")[0])[:30] or "other"


def dlq_topic_for(topic: str) -> str:
    if topic == settings.QUEUE_EVENTS_TOPIC:
        return settings.QUEUE_EVENTS_DLQ_TOPIC
    if topic == settings.QUEUE_CONTROL_TOPIC:
        return settings.QUEUE_CONTROL_DLQ_TOPIC
    return f"{topic}-dlq"


def dead_letter(message, reason: str) -> Outgoing:
    """The dead-letter record for a consumed confluent-kafka message."""
    headers = [
        ("dlq.reason", reason[:1000].encode()),
        ("dlq.reason_class", reason_class(reason).encode()),
        ("dlq.topic", message.topic().encode()),
        ("dlq.partition", str(message.partition()).encode()),
        ("dlq.offset", str(message.offset()).encode()),
        ("dlq.consumer", settings.KAFKA_CONSUMER_GROUP.encode()),
    ]
    return Outgoing(dlq_topic_for(message.topic()), message.value() or b"", message.key(), headers)


def send_dead_letters(letters: list[tuple[object, str]]) -> None:
    """Send (message, reason) pairs and wait for confirmation; count and log them."""
    if not letters:
        return
    send_confirmed([dead_letter(message, reason) for message, reason in letters])
    for message, reason in letters:
        logger.warning(
            "message dead-lettered",
            extra={"topic": message.topic(), "partition": message.partition(), "offset": message.offset(), "reason": reason},
        )
        _count(message.topic(), reason_class(reason))


def _count(topic: str, reason: str) -> None:
    dead_lettered.send(sender=send_dead_letters, topic=topic, reason=reason)
