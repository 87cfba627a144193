"""What happens to a batch once BatchConsumer (kafkabus/consumer.py) has read it, up to "done".

- `handle(messages)` raising a connectivity error (`is_transient`: database or broker unreachable)
  means "this batch could not be processed now": the same batch is retried with backoff; it is not
  done until it succeeds. Any other exception means some message in the batch cannot be handled: the
  batch is split in halves until that message is found, which is rejected (dead-lettered) with the
  exception as its reason, and the rest is applied (issue #10 §1). Handlers must therefore be
  idempotent for a batch handled again in parts (ingestion is; commands dedupe by command_id).
- Overlap (opt-in: `prepare` + `apply` instead of `handle`; the events consumer, issue #12):
  `prepare(messages)` is pure CPU (decode, validate, group), `apply(prepared)` is the database part.
  While batch N is applied on an apply thread (its own Django connection), the consumer's thread reads
  and prepares batch N+1; then it waits for N, reports N done, and hands N+1 over. At most one batch is
  in flight; a batch is done only after it committed; a retry or a bisection prepares again (a
  prepared batch is applied at most once).
- `done(messages)` is the consumer's: it stores the batch's offsets. It runs on the consumer's thread,
  before the next batch is handed over.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from django.db import close_old_connections, connections

logger = logging.getLogger(__name__)

_UNPREPARED = object()  # no prepared form at hand: handle(messages) prepares and applies


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


class BatchHandler:
    def __init__(
        self,
        *,
        name: str,
        handle: Callable[[list], None] | None,
        prepare: Callable[[list], object] | None,
        apply: Callable[[object], None] | None,
        reject: Callable[[object, str], None],
        stopping: threading.Event,
        done: Callable[[list], None],
    ):
        if handle is None:
            if prepare is None or apply is None:
                raise TypeError("BatchConsumer needs handle, or prepare and apply")
            handle = lambda messages: apply(prepare(messages))  # noqa: E731 (retries, bisection)
        self.name = name
        self.handle = handle
        self.prepare, self.apply = (prepare, apply) if apply is not None else (None, None)
        self.reject = reject
        self.stopping = stopping
        self.done = done
        self._applier: ThreadPoolExecutor | None = None
        self._in_flight: tuple[list, Future] | None = None

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def start(self) -> None:
        """The apply thread, when batches overlap (prepare + apply)."""
        if self.apply is not None:
            self._applier = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-apply")

    def take(self, messages: list) -> None:
        """A batch just read (empty after a quiet poll: that still finishes the batch in flight)."""
        if self._applier is not None:
            self._overlap(messages)
        elif messages:
            self._process(messages)

    def _overlap(self, messages: list) -> None:
        """Prepare this batch while the previous one is applied, then wait for that one (done: its
        offsets are stored) and hand this one to the apply thread."""
        prepared = _UNPREPARED
        if messages:
            try:
                prepared = self.prepare(messages)
            except Exception:  # a message the pure part chokes on: the apply thread bisects to it
                prepared = _UNPREPARED
        self.finish()
        if messages and not self.stopping.is_set():  # stopping: this one is redelivered, unstored
            self._in_flight = (messages, self._applier.submit(self._handle_retrying, messages, prepared))

    def finish(self) -> None:
        """Wait for the batch in flight, if any, and report it done."""
        if self._in_flight is None:
            return
        messages, future = self._in_flight
        self._in_flight = None
        if future.result():
            self.done(messages)

    def stop(self) -> None:
        """End the apply thread, closing its own database connection."""
        if self._applier is None:
            return
        self._applier.submit(connections.close_all).result()
        self._applier.shutdown(wait=True)
        self._applier = None

    def _process(self, messages: list) -> None:
        if self._handle_retrying(messages):
            self.done(messages)

    def _handle_retrying(self, messages: list, prepared=_UNPREPARED) -> bool:
        """Handle the batch, retrying it with backoff on connectivity errors; False when stopped
        first (nothing is stored: the batch is redelivered after a restart)."""
        backoff = 0.5
        while True:
            close_old_connections()  # a connection broken by a database restart is replaced
            try:
                self._handle_isolating(messages, prepared)
                return True
            except Exception:  # only connectivity errors get here
                logger.exception("%s: batch of %d failed; retrying in %.1fs", self.name, len(messages), backoff)
                if self.stopping.wait(backoff):
                    return False
                backoff = min(backoff * 2, 10.0)
                prepared = _UNPREPARED  # a failed apply may have changed its prepared batch

    def _handle_isolating(self, messages: list, prepared=_UNPREPARED) -> None:
        """handle(messages); if it fails for a reason other than connectivity, bisect down to the
        message that fails and reject it alone. A connectivity error propagates (whole-batch retry;
        parts already handled are handled again, idempotently)."""
        try:
            if prepared is _UNPREPARED:
                self.handle(messages)
            else:
                self.apply(prepared)
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
