"""Telemetry ingestion figure (issue #5 item 9, issue #12).

Creates QUEUES queues of the historical template (6 steps each, running as if launched) beside the
history, produces EVENTS progress events spread over their steps to queue-events, then:
1. baseline: consumes and json-parses the same messages without the database;
2. the figure: runs the events consumer (the loop of `manage.py consume_queue_events`) until every
   event is in PostgreSQL. Throughput from the first message received to the last batch committed;
   the consumer-group join before it (~3 s with tansu) is start-up, reported separately.
"""
from __future__ import annotations

import json
import time
import uuid

from benchmarks import dataset, targets
from benchmarks.harness import celery_eager, emit


def run(ctx) -> None:
    if not ctx.wants("telemetry_ingest"):
        return
    try:
        with celery_eager(False):
            _run(ctx, events=20_000 if ctx.quick else 200_000, queues=100, batch_size=5000)
    finally:
        dataset.remove_bench_queues()


def _run(ctx, *, events: int, queues: int, batch_size: int) -> None:
    from django.conf import settings
    from django.db import connection

    m = targets.models()
    payload = targets.template_payload("historical-pipeline")
    steps = []
    created = []
    for n in range(queues):
        queue, _ = targets.queue_create(payload=payload, queue_id=f"bench-tel-{n:04d}-{ctx.run_id}", source="api")
        created.append(queue.pk)
        steps.extend(queue.steps.values_list("queue__queue_id", "telemetry_id"))
    m.QueueRequest.objects.filter(queue_id__in=created).update(state="running")  # progress reports need a live step
    topic = settings.QUEUE_EVENTS_TOPIC
    targets.kafka_ensure_topics([topic, settings.QUEUE_EVENTS_DLQ_TOPIC])

    producer = targets.kafka_producer()
    for i in range(events):
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

    raw_cpu = time.process_time()
    raw_seconds = _raw_consume(topic, events, batch_size)
    raw_cpu = time.process_time() - raw_cpu
    before = m.TelemetryEvent.objects.filter(queue_id__in=created).count()

    def until():
        return m.TelemetryEvent.objects.filter(queue_id__in=created).count() - before >= events

    connection.close()  # a fresh connection: the consumer keeps it (CONN_MAX_AGE) and it is the one measured
    cpu, database_cpu = time.process_time(), _database_cpu()
    t0 = time.monotonic()
    consumer = targets.events_consumer_run(until=until, batch_size=batch_size, install_signals=False)
    done = time.monotonic()
    cpu = time.process_time() - cpu
    after = _database_cpu()
    database_cpu = after[1] - database_cpu[1] if database_cpu and after and after[0] == database_cpu[0] else None
    count = m.TelemetryEvent.objects.filter(queue_id__in=created).count() - before
    ingest = done - consumer.first_message_at
    rate, raw_rate = count / ingest, events / raw_seconds
    # CPU seconds are what a loaded machine does not distort: this process (the consumer, librdkafka's
    # threads included) and the PostgreSQL backend that served it, against the bare loop's CPU.
    spent = cpu + (database_cpu or 0.0)
    emit("telemetry_ingest", value=rate, unit="events/s", baseline="raw consume + json parse",
         baseline_value=raw_rate, scale=f"{events} events over {len(steps)} steps",
         target=">= 30000 events/s and >= 0.3x baseline", meets=rate >= 30_000 and rate >= 0.3 * raw_rate,
         events=count, batches=consumer.batches, seconds=ingest, seconds_including_group_join=done - t0,
         cpu_us_per_event=spent / count * 1e6, consumer_cpu_us_per_event=cpu / count * 1e6,
         database_cpu_us_per_event=None if database_cpu is None else database_cpu / count * 1e6,
         baseline_cpu_us_per_event=raw_cpu / events * 1e6,
         cpu_ratio=round(raw_cpu / spent, 3) if spent and database_cpu is not None else None)


def _database_cpu() -> tuple[int, float] | None:
    """(pid, CPU seconds so far) of this connection's PostgreSQL backend (Linux /proc; None elsewhere).
    A different pid after the run means the connection was replaced meanwhile: not measured."""
    import os

    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _raw_consume(topic: str, expected: int, batch_size: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer(targets.kafka_consumer_config(f"bench-raw-{uuid.uuid4().hex[:6]}"))
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
    return done - (first or t0)
