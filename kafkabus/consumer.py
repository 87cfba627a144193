"""A small batch-consumer loop shared by both consumers.

- Reads up to `batch_size` messages, hands them to `handle(messages)` (or `prepare` + `apply`), and
  stores their offsets only after the batch is done (its database transaction committed):
  at-least-once. Stored offsets are committed by librdkafka every second, and synchronously on a
  clean exit. Retries, the isolation of a message that cannot be handled, and the overlap of
  `prepare` with the previous batch's `apply` are BatchHandler's (kafkabus/batches.py).
- SIGTERM/SIGINT set a flag: the current batch finishes, offsets are stored and committed, the
  consumer closes.
- Broker restarts: librdkafka reconnects by itself; we re-create missing topics (an emptied
  broker) and log errors without dying. A member with no partitions checks its topics every few
  seconds (TOPIC_CHECK_SECONDS) and creates a missing one; librdkafka refreshes its topics'
  metadata every 5 s, so the group then rebalances onto it: after tansu restarted empty, the group
  re-formed around a topic with 0 partitions and librdkafka reported no error through consume(),
  so a check made only on such an error left the consumer idle for good (#12).
- The assignment is tracked from the rebalance callbacks, never asked of the client in the loop:
  `Consumer.assignment()` waits without a timeout on librdkafka's main thread and holds the
  interpreter lock meanwhile (the watchdog thread included).
- Stall watchdog: after a broker restart that loses the consumer group, librdkafka (2.11 against
  tansu) was seen blocking inside consume() for good. When a consume() call has not returned for
  `stall_seconds`, `on_stall` runs in a watchdog thread; the management commands re-execute
  themselves there (a fresh client; offsets not yet committed are redelivered, ingestion is
  idempotent).
- Lag (high watermark − this member's position, summed per topic) is logged and exported every
  KAFKA_LAG_LOG_SECONDS, from what the client already holds: no broker round trip in the loop.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from django.conf import settings

from kafkabus.batches import BatchHandler, dead_letter_one
from kafkabus.config import common_config, consumer_config
from kafkabus.signals import consumer_lag_measured

logger = logging.getLogger(__name__)

TOPIC_CHECK_SECONDS = 5.0  # at most one topic check (a metadata request) per this many seconds
# librdkafka's default (5 min) is how long a group would wait to see a topic re-created under it.
# Subscribing again instead could wedge a join in progress on tansu (seen in the tests).
METADATA_REFRESH = {"topic.metadata.refresh.interval.ms": 5000}


def ensure_topics(topics: list[str], *, timeout: float = 10.0) -> list[str]:
    """Create the topics that do not exist yet (1 partition locally; operators pre-create in production).
    Returns the topics created here."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(common_config())
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        logger.warning("cannot list topics: %s", exc)
        return []
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    created = []
    futures = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in missing])
    for topic, future in futures.items():
        try:
            future.result(timeout)
            logger.info("created topic %s", topic)
            created.append(topic)
        except Exception as exc:  # already created by someone else, or no permission: not fatal
            logger.info("topic %s not created: %s", topic, exc)
    return created


class BatchConsumer:
    def __init__(
        self,
        *,
        name: str,
        topics: list[str],
        handle: Callable[[list], None] | None = None,
        prepare: Callable[[list], object] | None = None,
        apply: Callable[[object], None] | None = None,
        batch_size: int | None = None,
        poll_timeout: float = 0.5,
        group: str | None = None,
        config: dict | None = None,
        create_topics: list[str] | None = None,
        on_stall: Callable[[], None] | None = None,
        stall_seconds: float | None = None,
        reject: Callable[[object, str], None] = dead_letter_one,
    ):
        self.name = name
        self.topics = topics
        self.stopping = threading.Event()
        self.handler = BatchHandler(name=name, handle=handle, prepare=prepare, apply=apply, reject=reject,
                                    stopping=self.stopping, done=self._done)
        self.batch_size = batch_size or settings.KAFKA_BATCH_SIZE
        self.poll_timeout = poll_timeout
        self.group = group or settings.KAFKA_CONSUMER_GROUP
        self.config = config or {}
        self.create_topics = create_topics if create_topics is not None else topics
        self.consumer = None
        self.processed = 0
        self.batches = 0
        self.first_message_at: float | None = None  # monotonic time the first message arrived
        self._last_lag = 0.0
        self._last_topic_check = 0.0
        self._assigned: frozenset[tuple[str, int]] = frozenset()  # kept by the rebalance callbacks
        self.on_stall = on_stall
        self.stall_seconds = stall_seconds or max(20.0, 3 * settings.KAFKA_SESSION_TIMEOUT_MS / 1000)
        self._consume_since: float | None = None

    # -------------------------------------------------------------- lifecycle

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        logger.info("%s: signal %s, finishing the current batch", self.name, signum)
        self.stopping.set()

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Consume until stopped (signal, `stop()`, or `until()` returning True)."""
        from confluent_kafka import Consumer

        ensure_topics(self.create_topics)
        self._last_topic_check = time.monotonic()  # just checked: the first polls (before the join) need not
        self.consumer = Consumer(consumer_config(self.group, **{**METADATA_REFRESH, **self.config}))
        self._subscribe()
        logger.info("%s: consuming %s as group %s", self.name, ",".join(self.topics), self.group)
        if self.on_stall is not None:
            threading.Thread(target=self._watchdog, name=f"{self.name}-watchdog", daemon=True).start()
        self.handler.start()
        try:
            while not self.stopping.is_set() and not (until and until()):
                self._step()
        finally:
            try:
                self.handler.finish()  # a stop finishes the batch being applied and stores its offsets
            finally:
                self.handler.stop()
                self._close()

    def _step(self) -> None:
        self._consume_since = time.monotonic()
        # With a batch in flight, a quiet topic must not keep its offsets (and the `until` check)
        # waiting a whole poll: a short read, then the in-flight batch is finished.
        timeout = min(self.poll_timeout, 0.05) if self.handler.in_flight else self.poll_timeout
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=timeout)
        self._consume_since = None
        good = [message for message in messages if message.error() is None]
        if len(good) != len(messages):  # rare: the errors, in order, after the fast pass
            for message in messages:
                error = message.error()
                if error is not None:
                    self._on_error(error)
        if good and self.first_message_at is None:
            self.first_message_at = time.monotonic()
        self.handler.take(good)
        if not self._assigned:
            self._check_topics()
        self._maybe_report_lag()

    def _subscribe(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        logger.info("%s: assigned %s", self.name, _names(partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}
        logger.info("%s: revoked %s", self.name, _names(partitions))

    def _check_topics(self) -> None:
        """Create missing topics (at most every TOPIC_CHECK_SECONDS); the group sees a created one at
        librdkafka's next metadata refresh (METADATA_REFRESH)."""
        now = time.monotonic()
        if now - self._last_topic_check < TOPIC_CHECK_SECONDS:
            return
        self._last_topic_check = now
        ensure_topics(self.create_topics, timeout=3)

    def _done(self, messages: list) -> None:
        self._store(messages)
        self.processed += len(messages)
        self.batches += 1

    def _store(self, messages: list) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        # A partition's messages come in offset order, so its last one in the batch carries its end:
        # read from the end and stop once every partition of ours was seen (one message when there
        # is one partition, instead of three calls and a max() per message). Only partitions still
        # ours: a batch applied across a rebalance leaves the revoked ones to their new owner (which
        # redelivers; ingestion is idempotent).
        assigned = self._assigned
        last: dict[tuple[str, int], int] = {}
        for message in reversed(messages):
            key = (message.topic(), message.partition())
            if key in last or key not in assigned:
                continue
            last[key] = message.offset()
            if len(last) == len(assigned):
                break
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        if not offsets:
            return
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # Partition revoked meanwhile (rebalance, broker restart): the new owner redelivers;
            # ingestion is idempotent, so that costs time, not correctness.
            logger.warning("%s: could not store offsets: %s", self.name, exc)

    def _on_error(self, error) -> None:
        from confluent_kafka import KafkaError

        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
            self._check_topics()  # e.g. a broker that restarted empty
            return
        logger.warning("%s: consumer error: %s", self.name, error)

    def _close(self) -> None:
        from confluent_kafka import KafkaException

        if self.consumer is None:
            return
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if "NO_OFFSET" not in str(exc):
                logger.warning("%s: final commit failed: %s", self.name, exc)
        try:
            self.consumer.close()
        finally:
            self.consumer = None
            logger.info("%s: closed after %d messages in %d batches", self.name, self.processed, self.batches)

    def _watchdog(self) -> None:
        while self.consumer is not None:
            time.sleep(1.0)
            since = self._consume_since
            if since is not None and time.monotonic() - since > self.stall_seconds:
                logger.error("%s: the Kafka client has been stuck for %.0fs; restarting it", self.name, self.stall_seconds)
                self.on_stall()
                return

    # -------------------------------------------------------------- lag

    def lag(self) -> dict[str, int]:
        """Per topic, over this member's partitions: the high watermark minus this member's position
        (what it has read; a batch being handled counts as read). Both are what the client holds: its
        position, and the high watermark of its last fetch response (librdkafka keeps it with every
        fetch). Never a broker round trip: committed() and an uncached watermark query cost ~0.4 s
        per partition against tansu, up to their timeout each with the broker away, in the poll loop."""
        from confluent_kafka import KafkaException, TopicPartition

        lag: dict[str, int] = {}
        for tp in self.consumer.position([TopicPartition(t, p) for t, p in sorted(self._assigned)]):
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True) or (None, -1)
            except KafkaException:  # the partition is gone meanwhile
                continue
            if high < 0:
                continue  # no fetch answered yet: nothing known
            # No position: nothing was delivered since the assignment although a fetch answered, so
            # the fetcher is at the end (until a fetch that just brought messages is consumed).
            lag[tp.topic] = lag.get(tp.topic, 0) + (max(high - tp.offset, 0) if tp.offset >= 0 else 0)
        return lag

    def _maybe_report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < settings.KAFKA_LAG_LOG_SECONDS:
            return
        self._last_lag = now
        try:
            lag = self.lag()
        except Exception as exc:
            logger.warning("%s: could not compute lag: %s", self.name, exc)
            return
        for topic, value in lag.items():
            logger.info("%s: lag %s=%d", self.name, topic, value, extra={"topic": topic, "lag": value})
            consumer_lag_measured.send(sender=type(self), topic=topic, lag=value)


def _names(partitions) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def reexec_process() -> None:
    """on_stall for the management commands: replace this process with a fresh copy of itself."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, [sys.executable, *sys.argv])
