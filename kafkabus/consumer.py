"""A small batch-consumer loop shared by both consumers.

- Reads up to `batch_size` messages, hands them to `handle(messages)`, and stores their offsets
  only after `handle` returned (it commits its database transaction first): at-least-once.
  Stored offsets are committed by librdkafka every second, and synchronously on a clean exit.
- `handle` raising a connectivity error (`is_transient`: database or broker unreachable) means
  "this batch could not be processed now": the same batch is retried with backoff; nothing is
  stored until it succeeds. Any other exception means some message in the batch cannot be
  handled: the batch is split in halves until that message is found, which is dead-lettered with
  the exception as its reason, and the rest is applied (issue #10 §1). Handlers must therefore be
  idempotent for a batch handled again in parts (ingestion is; commands dedupe by command_id).
- SIGTERM/SIGINT set a flag: the current batch finishes, offsets are stored and committed, the
  consumer closes.
- Broker restarts: librdkafka reconnects by itself; we re-create missing topics (an emptied
  broker) and log errors without dying.
- Stall watchdog: after a broker restart that loses the consumer group, librdkafka (2.11 against
  tansu) was seen blocking inside consume() for good. When a consume() call has not returned for
  `stall_seconds`, `on_stall` runs in a watchdog thread; the management commands re-execute
  themselves there (a fresh client; offsets not yet committed are redelivered, ingestion is
  idempotent).
- Lag (high watermark − committed offset, summed per topic) is logged and exported every
  KAFKA_LAG_LOG_SECONDS.
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
from django.db import close_old_connections

from kafkabus.config import common_config, consumer_config
from kafkabus.signals import consumer_lag_measured

logger = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Lost connectivity (database or broker): worth retrying the same work later, unlike anything else."""
    import psycopg
    from confluent_kafka import KafkaException
    from django.db import InterfaceError, OperationalError

    from kafkabus.publisher import DeliveryError

    return isinstance(exc, (
        psycopg.OperationalError, psycopg.InterfaceError, OperationalError, InterfaceError, KafkaException, DeliveryError,
    ))


def dead_letter_one(message, reason: str) -> None:
    """What BatchConsumer does by default with a message whose handling raised."""
    from kafkabus.deadletter import send_dead_letters

    send_dead_letters([(message, reason)])


def ensure_topics(topics: list[str], *, timeout: float = 10.0) -> None:
    """Create the topics that do not exist yet (1 partition locally; operators pre-create in production)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(common_config())
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        logger.warning("cannot list topics: %s", exc)
        return
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in missing])
    for topic, future in futures.items():
        try:
            future.result(timeout)
            logger.info("created topic %s", topic)
        except Exception as exc:  # already created by someone else, or no permission: not fatal
            logger.info("topic %s not created: %s", topic, exc)


class BatchConsumer:
    def __init__(
        self,
        *,
        name: str,
        topics: list[str],
        handle: Callable[[list], None],
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
        self.handle = handle
        self.reject = reject
        self.batch_size = batch_size or settings.KAFKA_BATCH_SIZE
        self.poll_timeout = poll_timeout
        self.group = group or settings.KAFKA_CONSUMER_GROUP
        self.config = config or {}
        self.create_topics = create_topics if create_topics is not None else topics
        self.stopping = threading.Event()
        self.consumer = None
        self.processed = 0
        self.batches = 0
        self.first_message_at: float | None = None  # monotonic time the first message arrived
        self._last_lag = 0.0
        self._last_topic_check = 0.0
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
        self.consumer = Consumer(consumer_config(self.group, **self.config))
        self.consumer.subscribe(self.topics)
        logger.info("%s: consuming %s as group %s", self.name, ",".join(self.topics), self.group)
        if self.on_stall is not None:
            threading.Thread(target=self._watchdog, name=f"{self.name}-watchdog", daemon=True).start()
        try:
            while not self.stopping.is_set() and not (until and until()):
                self._step()
        finally:
            self._close()

    def _step(self) -> None:
        self._consume_since = time.monotonic()
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout)
        self._consume_since = None
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            else:
                self._on_error(error)
        if good:
            if self.first_message_at is None:
                self.first_message_at = time.monotonic()
            self._process(good)
        self._maybe_report_lag()

    def _process(self, messages: list) -> None:
        backoff = 0.5
        while True:
            close_old_connections()  # a connection broken by a database restart is replaced
            try:
                self._handle_isolating(messages)
                break
            except Exception:  # only connectivity errors get here
                logger.exception("%s: batch of %d failed; retrying in %.1fs", self.name, len(messages), backoff)
                if self.stopping.wait(backoff):
                    return  # exit without storing: the batch is redelivered after a restart
                backoff = min(backoff * 2, 10.0)
        self._store(messages)
        self.processed += len(messages)
        self.batches += 1

    def _handle_isolating(self, messages: list) -> None:
        """handle(messages); if it fails for a reason other than connectivity, bisect down to the
        message that fails and reject it alone. A connectivity error propagates (whole-batch retry;
        parts already handled are handled again, idempotently)."""
        try:
            self.handle(messages)
            return
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(messages) == 1:
                logger.exception("%s: a message cannot be handled; dead-lettering it", self.name)
                self.reject(messages[0], f"internal error: {type(exc).__name__}: {exc}"[:500])
                return
            logger.warning("%s: batch of %d failed (%s: %s); splitting it to find the message",
                           self.name, len(messages), type(exc).__name__, str(exc)[:200])
        middle = len(messages) // 2
        self._handle_isolating(messages[:middle])
        self._handle_isolating(messages[middle:])

    def _store(self, messages: list) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        last: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            last[key] = max(last.get(key, -1), message.offset())
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
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
            now = time.monotonic()
            if now - self._last_topic_check > 5:  # e.g. a broker that restarted empty
                self._last_topic_check = now
                ensure_topics(self.create_topics, timeout=3)
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

    def lag(self, timeout: float = 5.0) -> dict[str, int]:
        """Per topic: high watermark minus committed offset over this member's partitions."""
        assignment = self.consumer.assignment()
        if not assignment:
            return {}
        committed = self.consumer.committed(assignment, timeout=timeout)
        lag: dict[str, int] = {}
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            position = tp.offset if tp.offset >= 0 else low
            lag[tp.topic] = lag.get(tp.topic, 0) + max(high - position, 0)
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


def reexec_process() -> None:
    """on_stall for the management commands: replace this process with a fresh copy of itself."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, [sys.executable, *sys.argv])
