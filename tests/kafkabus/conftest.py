"""Kafka fixtures: a real tansu broker (session), per-test topics and consumer group, helpers.

`kafka_env` gives the environment a subprocess (consumer, launcher, simulator) needs to use the
same broker, topics and test database as the test.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from devtools.servers import FAST_CONSUMER_CONFIG


@pytest.fixture
def kafka_topics(kafka_server, settings):
    """Point the Kafka settings at the test broker, with topics and a group of this test's own."""
    from kafkabus import publisher

    suffix = uuid.uuid4().hex[:8]
    settings.KAFKA_BOOTSTRAP_SERVERS = kafka_server.bootstrap
    settings.KAFKA_ENABLED = True
    settings.KAFKA_USER = ""
    settings.QUEUE_CONTROL_TOPIC = f"queue-control-{suffix}"
    settings.QUEUE_EVENTS_TOPIC = f"queue-events-{suffix}"
    settings.QUEUE_CONTROL_DLQ_TOPIC = f"queue-control-{suffix}-dlq"
    settings.QUEUE_EVENTS_DLQ_TOPIC = f"queue-events-{suffix}-dlq"
    settings.KAFKA_CONSUMER_GROUP = f"qm-test-{suffix}"
    settings.KAFKA_SESSION_TIMEOUT_MS = FAST_CONSUMER_CONFIG["session.timeout.ms"]
    settings.KAFKA_MAX_POLL_INTERVAL_MS = FAST_CONSUMER_CONFIG["max.poll.interval.ms"]
    settings.KAFKA_LAG_LOG_SECONDS = 1.0
    publisher._producer = None  # a new broker address
    yield settings
    publisher._producer = None


@pytest.fixture
def kafka_env(kafka_topics):
    """Environment for subprocesses (manage.py consumers, launcher, simulator): same broker, topics, DB."""
    from django.db import connection

    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": f"postgresql://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_topics.KAFKA_BOOTSTRAP_SERVERS,
            "QUEUE_CONTROL_TOPIC": kafka_topics.QUEUE_CONTROL_TOPIC,
            "QUEUE_EVENTS_TOPIC": kafka_topics.QUEUE_EVENTS_TOPIC,
            "QUEUE_CONTROL_DLQ_TOPIC": kafka_topics.QUEUE_CONTROL_DLQ_TOPIC,
            "QUEUE_EVENTS_DLQ_TOPIC": kafka_topics.QUEUE_EVENTS_DLQ_TOPIC,
            "KAFKA_CONSUMER_GROUP": kafka_topics.KAFKA_CONSUMER_GROUP,
            "KAFKA_SESSION_TIMEOUT_MS": str(kafka_topics.KAFKA_SESSION_TIMEOUT_MS),
            "KAFKA_MAX_POLL_INTERVAL_MS": str(kafka_topics.KAFKA_MAX_POLL_INTERVAL_MS),
            "KAFKA_LAG_LOG_SECONDS": "1",
        }
    )
    env.pop("KAFKA_USER", None)
    return env


def produce(topic: str, values: list, *, key: str | None = None) -> None:
    """Send dicts (as JSON) or raw bytes, confirmed."""
    from kafkabus.publisher import Outgoing, send_confirmed

    send_confirmed(
        [Outgoing(topic, v if isinstance(v, bytes) else json.dumps(v).encode(), key.encode() if key else None)
         for v in values],
        timeout=20,
    )


def read_topic(topic: str, *, expect: int, timeout: float = 20.0) -> list:
    """Every message of every partition from the beginning, waiting until at least `expect` are there.

    Ordered by partition, then offset (topics auto-created by a producer may have several partitions).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from django.conf import settings

    consumer = Consumer(
        {"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
         "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions or {0: None}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages, deadline = [], time.monotonic() + timeout
    try:
        while len(messages) < expect and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.3):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return sorted(messages, key=lambda m: (m.partition(), m.offset()))


def events_of(messages) -> list[dict]:
    return [json.loads(m.value()) for m in messages]


def run_until(run, predicate, *, timeout: float = 40.0):
    """Run a consumer loop in this thread until `predicate()` is true; fail on timeout."""
    deadline = time.monotonic() + timeout
    state = {"ok": False}

    def until():
        if predicate():
            state["ok"] = True
            return True
        return time.monotonic() > deadline

    consumer = run(until=until, install_signals=False)
    assert state["ok"], "the consumer did not get there in time"
    return consumer
