"""BatchConsumer with prepare/apply (issue #12, telemetry_ingest): batch N+1 is read and prepared while
batch N is applied, without giving up at-least-once, isolation or a clean stop. Real broker (tansu);
the hooks are the test's own, so what they record is what the consumer did."""
from __future__ import annotations

import threading

import pytest
from confluent_kafka import TopicPartition

from kafkabus.consumer import BatchConsumer, ensure_topics
from tests.kafkabus.conftest import produce

BATCH = 5
GUARD = 30.0  # hang guard for waits on the consumer thread, not a speed check


def _values(count: int) -> list[bytes]:
    return [f"m{i:03d}".encode() for i in range(count)]


def _topic(kafka_topics, count: int) -> str:
    topic = kafka_topics.QUEUE_EVENTS_TOPIC
    ensure_topics([topic])  # one partition: offsets 0..count-1 in order
    produce(topic, _values(count), key="k")
    return topic


class Recorder:
    """prepare/apply hooks that log what happens, in order, from both threads."""

    def __init__(self):
        self.log: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.applied: list[bytes] = []
        self.hold: dict[int, threading.Event] = {}  # batch number → released when set
        self.seen = threading.Condition(self.lock)
        self.prepared_batches = 0

    def note(self, what: str, batch: int) -> None:
        with self.seen:
            self.log.append((what, batch))
            self.seen.notify_all()

    def wait_for(self, entry: tuple[str, int]) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: entry in self.log, GUARD), f"never saw {entry}: {self.log}"

    def prepare(self, messages):
        with self.lock:
            self.prepared_batches += 1
            batch = self.prepared_batches
        self.note("prepare", batch)
        return batch, [m.value() for m in messages]

    def apply(self, prepared):
        batch, values = prepared
        self.note("apply-start", batch)
        hold = self.hold.get(batch)
        if hold is not None:
            assert hold.wait(GUARD), f"batch {batch} held too long"
        with self.lock:
            self.applied.extend(values)
        self.note("apply-end", batch)


def _consumer(recorder: Recorder, **kwargs) -> BatchConsumer:
    return BatchConsumer(name="overlap-test", topics=[kwargs.pop("topic")], prepare=recorder.prepare,
                         apply=recorder.apply, batch_size=BATCH, **kwargs)


def _committed(consumer: BatchConsumer, topic: str) -> int:
    consumer.consumer.commit(asynchronous=False)  # what is stored, committed now (else every second)
    return consumer.consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset


def _in_thread(consumer: BatchConsumer, until=None) -> threading.Thread:
    thread = threading.Thread(target=consumer.run, kwargs={"until": until}, daemon=True)
    thread.start()
    return thread


def test_it_prepares_the_next_batch_while_the_previous_one_is_applied(kafka_topics):
    """#12 case 2 (the overlap happens): batch 2 is prepared while batch 1 is still being applied
    (batch 1's apply waits until it sees that), and never more than one batch is in flight: batch
    N+2 is not prepared before batch N's apply ended."""
    topic = _topic(kafka_topics, 4 * BATCH)
    recorder = Recorder()
    prepared_2 = threading.Event()
    recorder.hold[1] = prepared_2
    real_prepare = recorder.prepare

    def prepare(messages):
        result = real_prepare(messages)
        if result[0] == 2:
            prepared_2.set()
        return result

    recorder.prepare = prepare
    consumer = _consumer(recorder, topic=topic)
    consumer.run(until=lambda: len(recorder.applied) == 4 * BATCH)

    log = recorder.log
    assert log.index(("prepare", 2)) < log.index(("apply-end", 1))
    for n in range(1, 3):
        assert log.index(("apply-end", n)) < log.index(("prepare", n + 2))
        assert log.index(("apply-end", n)) < log.index(("apply-start", n + 1))
    assert sorted(recorder.applied) == _values(4 * BATCH)
    assert consumer.processed == 4 * BATCH and consumer.batches == 4


def test_it_stores_no_offsets_of_a_batch_whose_apply_has_not_committed_and_a_stop_finishes_it(kafka_topics):
    """#12 case 1 (offsets only after apply) and case 4 (stop finishes the in-flight batch): while
    batch 2's apply is blocked and batch 3 is already prepared, the group's committed offset is the
    end of batch 1. A stop then finishes batch 2 and stores its offsets, not batch 3's (prepared,
    never applied): a new consumer of the group gets batch 3 again, nothing is lost."""
    topic = _topic(kafka_topics, 4 * BATCH)
    recorder = Recorder()
    release = threading.Event()
    recorder.hold[2] = release
    consumer = _consumer(recorder, topic=topic)
    thread = _in_thread(consumer)
    try:
        recorder.wait_for(("prepare", 3))
        recorder.wait_for(("apply-start", 2))
        assert _committed(consumer, topic) == BATCH
        consumer.stop()
    finally:
        release.set()
        thread.join(GUARD)
    assert not thread.is_alive()
    assert ("apply-end", 2) in recorder.log and ("apply-start", 3) not in recorder.log
    assert recorder.applied == _values(2 * BATCH)
    assert consumer.processed == 2 * BATCH

    again = Recorder()
    second = _consumer(again, topic=topic)
    second.run(until=lambda: len(again.applied) >= 2 * BATCH)
    assert again.applied == _values(4 * BATCH)[2 * BATCH:]


def test_it_isolates_the_one_message_whose_apply_raises(kafka_topics):
    """#12 case 3 (bisect/dead letter unchanged): apply raising for a batch that holds one bad
    message splits it until that message is found; only it is rejected, every other message is
    applied exactly once, and the batch's offsets are stored."""
    topic = _topic(kafka_topics, 2 * BATCH)
    bad = _values(2 * BATCH)[BATCH + 2]
    recorder = Recorder()
    real_apply = recorder.apply

    def apply(prepared):
        if bad in prepared[1]:
            raise LookupError("a bug that only this message triggers")
        real_apply(prepared)

    rejected = []
    consumer = BatchConsumer(name="overlap-test", topics=[topic], prepare=recorder.prepare, apply=apply,
                             batch_size=BATCH, reject=lambda message, reason: rejected.append((message.value(), reason)))
    consumer.run(until=lambda: consumer.processed == 2 * BATCH)
    assert [value for value, _ in rejected] == [bad] and "LookupError" in rejected[0][1]
    assert sorted(recorder.applied) == [v for v in _values(2 * BATCH) if v != bad]
    assert _committed_after_close(topic, kafka_topics.KAFKA_CONSUMER_GROUP) == 2 * BATCH


def test_it_retries_a_transient_failure_with_the_batch_prepared_again(kafka_topics):
    """#12 (transient errors as before): a connectivity error in apply retries the whole batch;
    the retry prepares it again (a prepared batch is applied at most once) and nothing is lost."""
    from django.db import OperationalError

    topic = _topic(kafka_topics, BATCH)
    recorder = Recorder()
    real_apply = recorder.apply
    failures = []

    def apply(prepared):
        if not failures:
            failures.append(prepared[0])
            raise OperationalError("database unreachable")
        real_apply(prepared)

    consumer = BatchConsumer(name="overlap-test", topics=[topic], prepare=recorder.prepare, apply=apply,
                             batch_size=BATCH)
    consumer.run(until=lambda: consumer.processed == BATCH)
    assert failures == [1] and recorder.prepared_batches == 2
    assert recorder.applied == _values(BATCH)


def _committed_after_close(topic: str, group: str) -> int:
    from confluent_kafka import Consumer
    from django.conf import settings

    reader = Consumer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": group})
    try:
        return reader.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        reader.close()


@pytest.mark.parametrize("kwargs", [{"prepare": lambda m: m}, {"apply": lambda p: None}])
def test_it_needs_both_halves_or_a_handler(kwargs):
    """#12: prepare without apply (or the reverse) is a mistake, not a silent one-at-a-time consumer."""
    with pytest.raises(TypeError):
        BatchConsumer(name="x", topics=["t"], batch_size=1, **kwargs)
