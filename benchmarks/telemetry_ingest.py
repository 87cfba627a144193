"""Telemetry ingestion figures (issue #5 item 9, issue #12).

Creates QUEUES queues of the historical template (6 steps each, running as if launched) beside the
history, produces EVENTS events spread over their steps to a queue-events topic of its own, then:
1. baseline: consumes and json-parses the same messages without the database;
2. the figure: runs the events consumer (the loop of `manage.py consume_queue_events`) until every
   event is in PostgreSQL (counted as reports: a coalesced progress row stands for `coalesced` of
   them). Throughput from the first message received to the last batch committed; the
   consumer-group join before it (~3 s with tansu) is start-up, reported separately.

Two figures: `telemetry_ingest`, plain progress reports only (the issue's figure; they are
coalesced per step per batch), and `telemetry_ingest_mixed`, one `started` event per LIFECYCLE_EVERY
reports (a pod run again: a lifecycle event, stored as a row of its own through the full path), so
the cost of what is not coalesced shows too.

`BENCH_PROFILE=1` logs the consumer run's profile (its threads included: the apply thread of the
overlap) to the progress log, top 25 by own time and top 40 by cumulative time.
"""
from __future__ import annotations

import json
import os
import time
import uuid

LIFECYCLE_EVERY = 50

from benchmarks import dataset, targets
from benchmarks.harness import celery_eager, emit, log, process_cpu


def run(ctx) -> None:
    from django.conf import settings
    from django.test.utils import override_settings

    for figure, lifecycle_every in (("telemetry_ingest", None), ("telemetry_ingest_mixed", LIFECYCLE_EVERY)):
        if not ctx.wants(figure):
            continue
        topic = f"{settings.QUEUE_EVENTS_TOPIC}-bench-{figure}-{ctx.run_id}"  # its own: no other figure's messages
        try:
            with celery_eager(False), override_settings(QUEUE_EVENTS_TOPIC=topic):
                _run(ctx, figure, events=20_000 if ctx.quick else 200_000, queues=100, batch_size=5000,
                     lifecycle_every=lifecycle_every)
        finally:
            dataset.remove_bench_queues()


def _run(ctx, figure: str, *, events: int, queues: int, batch_size: int, lifecycle_every: int | None) -> None:
    from django.conf import settings
    from django.db import connection
    from django.db.backends.signals import connection_created
    from django.db.models import Sum

    m = targets.models()
    payload = targets.template_payload("historical-pipeline")
    steps = []
    created = []
    tag = "mix" if lifecycle_every else "prg"
    for n in range(queues):
        queue, _ = targets.queue_create(payload=payload, queue_id=f"bench-tel-{n:04d}-{tag}-{ctx.run_id}",
                                        source="api")
        created.append(queue.pk)
        steps.extend(queue.steps.values_list("queue__queue_id", "telemetry_id"))
    m.QueueRequest.objects.filter(queue_id__in=created).update(state="running")  # progress reports need a live step
    topic = settings.QUEUE_EVENTS_TOPIC
    targets.kafka_ensure_topics([topic, settings.QUEUE_EVENTS_DLQ_TOPIC])

    producer = targets.kafka_producer()
    lifecycle = 0
    for i in range(events):
        queue_id, producer_id = steps[i % len(steps)]
        status = "loading"
        if lifecycle_every and i % lifecycle_every == lifecycle_every - 1:
            status, lifecycle = "started", lifecycle + 1
        value = json.dumps({
            "event": status, "queue_id": queue_id, "producer": producer_id, "symbol": "BTCUSDT",
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
    def reports() -> int:
        stored = m.TelemetryEvent.objects.filter(queue_id__in=created)
        return stored.aggregate(n=Sum("coalesced"))["n"] or 0

    before = reports()

    # The consumer applies batches on a thread with a connection of its own, closed when it ends:
    # its backend's CPU is sampled at every check, the last one coming after the last commit.
    appliers: dict[int, float] = {}

    def opened(sender, connection, **kwargs):
        appliers[connection.connection.info.backend_pid] = 0.0

    def until():
        for pid in list(appliers):  # the apply thread may be adding one
            appliers[pid] = process_cpu(pid) or appliers[pid]
        return reports() - before >= events

    connection.close()  # a fresh connection: the consumer's checks keep it (CONN_MAX_AGE); measured with the applier's
    cpu, database_cpu = time.process_time(), _database_cpu()
    connection_created.connect(opened, weak=False)
    profile = _Profile()
    t0 = time.monotonic()
    try:
        consumer = profile.runcall(targets.events_consumer_run, until=until, batch_size=batch_size, install_signals=False)
    finally:
        connection_created.disconnect(opened)
    done = time.monotonic()
    cpu = time.process_time() - cpu
    profile.report(figure)
    after = _database_cpu()
    database_cpu = after[1] - database_cpu[1] if database_cpu and after and after[0] == database_cpu[0] else None
    if database_cpu is not None:
        database_cpu += sum(appliers.values())
    count = reports() - before
    rows = m.TelemetryEvent.objects.filter(queue_id__in=created).count()
    ingest = done - consumer.first_message_at
    rate, raw_rate = count / ingest, events / raw_seconds
    # CPU seconds are what a loaded machine does not distort: this process (the consumer, librdkafka's
    # threads included) and the PostgreSQL backend that served it, against the bare loop's CPU.
    spent = cpu + (database_cpu or 0.0)
    mix = f", 1 lifecycle event per {lifecycle_every}" if lifecycle_every else ""
    emit(figure, value=rate, unit="events/s", baseline="raw consume + json parse",
         baseline_value=raw_rate, scale=f"{events} events over {len(steps)} steps{mix}",
         target=">= 30000 events/s and >= 0.3x baseline", meets=rate >= 30_000 and rate >= 0.3 * raw_rate,
         events=count, rows=rows, lifecycle_events=lifecycle, batches=consumer.batches, seconds=ingest, seconds_including_group_join=done - t0,
         cpu_us_per_event=spent / count * 1e6, consumer_cpu_us_per_event=cpu / count * 1e6,
         database_cpu_us_per_event=None if database_cpu is None else database_cpu / count * 1e6,
         baseline_cpu_us_per_event=raw_cpu / events * 1e6,
         cpu_ratio=round(raw_cpu / spent, 3) if spent and database_cpu is not None else None)


def _database_cpu() -> tuple[int, float] | None:
    """(pid, CPU seconds so far) of this connection's PostgreSQL backend (Linux /proc; None elsewhere).
    A different pid after the run means the connection was replaced meanwhile: not measured."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
    except (OSError, ValueError, IndexError):
        return None
    seconds = process_cpu(pid)
    return None if seconds is None else (pid, seconds)


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


class _Profile:
    """BENCH_PROFILE=1: cProfile of the consumer run and of every Python thread it starts (a profiler
    per thread, merged in the report); otherwise a plain call, so the figures carry no profiler cost.
    Timed by each thread's own CPU clock: with wall time, a thread waiting for the interpreter lock
    would charge the wait to whatever function it was in."""

    def __init__(self):
        self.on = os.environ.get("BENCH_PROFILE") == "1"
        self.profiles: list = []

    def runcall(self, fn, **kwargs):
        if not self.on:
            return fn(**kwargs)
        import cProfile
        import threading

        def thread_started(*_):  # a new thread's first profile event: it gets a profiler of its own
            profile = cProfile.Profile(time.thread_time)
            self.profiles.append(profile)
            profile.enable()

        main = cProfile.Profile(time.thread_time)
        self.profiles.append(main)
        threading.setprofile(thread_started)
        try:
            return main.runcall(fn, **kwargs)
        finally:
            threading.setprofile(None)

    def report(self, figure: str) -> None:
        if not self.profiles:
            return
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(self.profiles[0], stream=out)
        for profile in self.profiles[1:]:
            stats.add(profile)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        log(f"{figure} profile (consumer run, {len(self.profiles)} threads):\n{out.getvalue()}")
