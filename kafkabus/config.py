"""Client configuration for confluent-kafka, from settings (DESIGN §6).

SASL_SSL with SCRAM-SHA-512 when KAFKA_USER is set (the CA from CA_PATH when given), plaintext
otherwise. Consumers never auto-store offsets: a batch's offsets are stored only after its
database transaction committed (at-least-once), and the stored offsets are committed in the
background and on close.
"""
from __future__ import annotations

from django.conf import settings

from kafkabus.connection import connection_config

# Marks what the manager itself publishes, so its own consumers skip it (no loops).
ORIGIN = "queue-manager"
COMMAND_ID_PREFIX = "qm-"  # names our command ids; not a marker (workers may echo them back)


def is_own_message(data: dict) -> bool:
    """By `origin` only: a worker echoing the stop command it obeyed (command_id `qm-…`) is telemetry."""
    return data.get("origin") == ORIGIN


def common_config() -> dict:
    return connection_config(
        bootstrap=settings.KAFKA_BOOTSTRAP_SERVERS,
        user=settings.KAFKA_USER,
        password=settings.KAFKA_PASSWORD,
        ca_path=str(settings.CA_PATH) if settings.CA_PATH else "",
        client_id=ORIGIN,
    )


def producer_config(**overrides) -> dict:
    config = common_config()
    config.update(
        {
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(getattr(settings, "KAFKA_DELIVERY_TIMEOUT_SECONDS", 10) * 1000),
        }
    )
    config.update(overrides)
    return config


def consumer_config(group: str | None = None, **overrides) -> dict:
    config = common_config()
    config.update(
        {
            "group.id": group or settings.KAFKA_CONSUMER_GROUP,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "session.timeout.ms": getattr(settings, "KAFKA_SESSION_TIMEOUT_MS", 45000),
            "max.poll.interval.ms": getattr(settings, "KAFKA_MAX_POLL_INTERVAL_MS", 300000),
        }
    )
    config.update(overrides)
    return config
