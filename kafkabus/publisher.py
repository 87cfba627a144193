"""Publishing to Kafka with confirmed delivery: stop commands to workers, acks and pongs.

A message counts as sent only when the broker acknowledged it (delivery callback without error,
within KAFKA_DELIVERY_TIMEOUT_SECONDS); otherwise `DeliveryError` is raised. One producer per
process, created lazily (and again after a fork, e.g. in a Celery prefork child).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

from django.conf import settings

from kafkabus.config import COMMAND_ID_PREFIX, ORIGIN, producer_config

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_producer = None
_producer_pid = None


class DeliveryError(RuntimeError):
    """The broker did not confirm a message in time."""


@dataclass
class Outgoing:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None


def get_producer():
    global _producer, _producer_pid
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            from confluent_kafka import Producer

            _producer, _producer_pid = Producer(producer_config()), os.getpid()
        return _producer


def encode(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def send_confirmed(messages: list[Outgoing], *, timeout: float | None = None) -> None:
    """Produce `messages` and wait until every one is acknowledged; raise DeliveryError otherwise."""
    if not messages:
        return
    producer = get_producer()
    timeout = settings.KAFKA_DELIVERY_TIMEOUT_SECONDS if timeout is None else timeout
    failures: list[str] = []
    pending = [len(messages)]

    def on_delivery(err, msg):
        pending[0] -= 1
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    deadline = time.monotonic() + timeout
    for message in messages:
        while True:
            try:
                producer.produce(
                    message.topic, value=message.value, key=message.key, headers=message.headers, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                producer.poll(0.05)
                if time.monotonic() > deadline:
                    raise DeliveryError("the producer queue stayed full") from None
    producer.flush(max(deadline - time.monotonic(), 0.1))
    if pending[0] > 0:
        raise DeliveryError(f"{pending[0]} of {len(messages)} messages not confirmed within {timeout:g}s")
    if failures:
        raise DeliveryError("; ".join(failures[:5]))


def stop_command(step) -> dict:
    """The stop command of DESIGN §6 for one step, marked so our own consumer skips it. `run` is the
    step run it is for (the STEP_RUN its worker was given): a retried step's worker must not obey a
    stop its previous run was sent, which it may read when its position on the topic is older."""
    return {
        "command": "stop",
        "queue_id": step.queue.queue_id,
        "target": step.target,
        "telemetry_id": step.telemetry_id,
        "run": step.run,
        "command_id": f"{COMMAND_ID_PREFIX}stop-{uuid.uuid4().hex}",
        "origin": ORIGIN,
        "timestamp": time.time(),
    }


def publish_stop(step) -> dict:
    """Send `stop` to one step's worker on QUEUE_CONTROL_TOPIC; returns the command once confirmed."""
    return publish_stops([step])[0]


def publish_stops(steps) -> list[dict]:
    """`publish_stop` for many steps, confirmed together (one wait for the broker, not one per step)."""
    commands = [stop_command(step) for step in steps]
    send_confirmed([Outgoing(settings.QUEUE_CONTROL_TOPIC, encode(command), step.queue.queue_id.encode())
                    for step, command in zip(steps, commands)])
    for command in commands:
        logger.info(
            "stop command published",
            extra={"queue_id": command["queue_id"], "telemetry_id": command["telemetry_id"], "command_id": command["command_id"]},
        )
    return commands
