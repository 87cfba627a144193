"""Telemetry ingestion benchmark (issue #5 item 9).

Starts its own tansu broker, PostgreSQL and Redis (devtools.servers), migrates a fresh database, creates
QUEUES queues of the historical template (6 steps each), produces EVENTS progress events spread
over every step to queue-events, then:
1. raw: consumes and json-parses the same messages without the database;
2. end to end: runs the events consumer (kafkabus.events.run, the code path of
   `manage.py consume_queue_events`) until every event is committed to PostgreSQL.
Prints JSON lines: raw_consume_parse, ingest_end_to_end, ratio.

Usage: python -m benchmarks.run [--events N] [--queues Q] [--batch-size B]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path


def _args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks.run")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=5000)
    return parser.parse_args(argv)


def emit(**figure) -> None:
    print(json.dumps(figure), flush=True)


def main(argv: list[str]) -> int:
    args = _args(argv)
    from devtools.servers import FAST_CONSUMER_CONFIG, start_kafka, start_postgres, start_redis

    base = Path(tempfile.mkdtemp(prefix="streamforge-bench-"))
    try:
        with start_postgres(base / "pg", base / "logs", durable=False) as pg, start_kafka(base / "logs") as kafka, \
                start_redis(base / "redis", base / "logs") as redis:
            os.environ.update({
                "DATABASE_URL": pg.url, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "DEBUG": "1",
                "SECRET_KEY": "bench-only", "LOG_LEVEL": "warning", "CELERY_TASK_ALWAYS_EAGER": "0",
                "KAFKA_SESSION_TIMEOUT_MS": str(FAST_CONSUMER_CONFIG["session.timeout.ms"]),
                "KAFKA_MAX_POLL_INTERVAL_MS": str(FAST_CONSUMER_CONFIG["max.poll.interval.ms"]),
                "QUEUE_EVENTS_TOPIC": f"bench-events-{uuid.uuid4().hex[:6]}",
                "DJANGO_SETTINGS_MODULE": "queuemanager.settings",
            })
            # queue_create enqueues the scheduler; nothing consumes it here.
            os.environ["REDIS_URL"] = os.environ["CELERY_BROKER_URL"] = redis.url
            import django

            django.setup()
            _run(args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _run(args) -> None:
    from django.conf import settings
    from django.core.management import call_command

    from kafkabus.consumer import ensure_topics
    from kafkabus.publisher import get_producer
    from queues.models import QueueRequest, StepState, TelemetryEvent
    from queues.pipeline_templates import template_payload
    from queues.services import queue_create

    call_command("migrate", verbosity=0)
    payload = template_payload("historical-pipeline")
    steps = []
    for n in range(args.queues):
        queue, _ = queue_create(payload=payload, queue_id=f"bench-{n:04d}", source="api")
        steps.extend(queue.steps.values_list("queue__queue_id", "telemetry_id"))
    QueueRequest.objects.update(state=StepState.RUNNING)  # as if launched; events are progress reports
    topic = settings.QUEUE_EVENTS_TOPIC
    ensure_topics([topic, settings.QUEUE_EVENTS_DLQ_TOPIC])

    producer = get_producer()
    started = time.monotonic()
    for i in range(args.events):
        queue_id, producer_id = steps[i % len(steps)]
        value = json.dumps({
            "event": "loading", "queue_id": queue_id, "producer": producer_id, "symbol": "BTCUSDT",
            "type": "api_candles_5m", "records_written": i // len(steps) + 1, "timestamp": 1717200000 + i,
            "message": "loading candles",
        }).encode()
        while True:
            try:
                producer.produce(topic, value=value, key=queue_id.encode())
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(120)
    emit(figure="produce", events=args.events, steps=len(steps), seconds=round(time.monotonic() - started, 2))

    raw, raw_total = _raw_consume(topic, args.events, args.batch_size)
    emit(figure="raw_consume_parse", events=args.events, seconds=round(raw, 3), events_per_s=round(args.events / raw),
         seconds_including_group_join=round(raw_total, 3))

    from kafkabus import events

    started_at = [None]

    def until():
        # Counting rows is cheap next to the batches; checked once per consume() call.
        if started_at[0] is None:
            started_at[0] = time.monotonic()
        return TelemetryEvent.objects.count() >= args.events

    t0 = time.monotonic()
    consumer = events.run(until=until, batch_size=args.batch_size, install_signals=False)
    done = time.monotonic()
    count = TelemetryEvent.objects.count()
    # Throughput from the first message received to the last batch committed; the consumer group
    # join before it (~3 s with tansu) is start-up, reported separately.
    ingest = done - consumer.first_message_at
    emit(figure="ingest_end_to_end", events=count, seconds=round(ingest, 3), events_per_s=round(count / ingest),
         batches=consumer.batches, seconds_including_group_join=round(done - t0, 3),
         events_per_s_including_group_join=round(count / (done - t0)))
    emit(figure="ratio", end_to_end_over_raw=round((count / ingest) / (args.events / raw), 3))


def _raw_consume(topic: str, expected: int, batch_size: int) -> float:
    from confluent_kafka import Consumer

    from kafkabus.config import consumer_config

    consumer = Consumer(consumer_config(f"bench-raw-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    seen, t0, first = 0, time.monotonic(), None
    while seen < expected and time.monotonic() - t0 < 300:
        for message in consumer.consume(batch_size, timeout=0.5):
            if message.error() is None:
                first = first or time.monotonic()
                json.loads(message.value())
                seen += 1
    done = time.monotonic()
    consumer.close()
    return done - (first or t0), done - t0
