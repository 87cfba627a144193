"""BatchConsumer when its topic is missing, and its lag report (issue #12, the stall after a broker restart
that got the ingestion overlap reverted). Real broker (tansu).

What the stall was (seen with and without the overlap, `test_it_survives_a_broker_restart`): tansu keeps
topics in memory, so a restart empties it. The group re-forms, the range assignor finds the subscribed
topic with 0 partitions and assigns nothing, and librdkafka reports no error through consume() on that
path; the consumer re-created topics only on such an error, so it sat unassigned for good, logging
nothing (its lag report had no partitions to report). When librdkafka instead crashed on the vanished
topic, the test's restart of the process created the topic: the test passed by the crash.
"""
from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

import kafkabus.consumer as consumer_module
from kafkabus.consumer import BatchConsumer, ensure_topics
from tests.kafkabus.conftest import produce

GUARD = 60.0  # hang guard for waits on the consumer thread, not a speed check
BATCH = 5


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _exists(topic: str) -> bool:
    from django.conf import settings

    admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS})
    return topic in admin.list_topics(timeout=10).topics


def test_it_creates_its_missing_topic_and_consumes_what_arrives_there(kafka_topics, monkeypatch):
    """#12 (the stall after a broker restart): a consumer subscribed to a topic that does not exist
    (an emptied broker; here: the broker could not be asked at start-up, so nothing was created) gets
    no partitions. After the restart librdkafka reported no error through consume() at all (the
    restart itself cannot be used here: on a vanished topic librdkafka 2.11/2.16 more often crashes
    the process), so the test drops the unknown-topic errors it does report for a topic never seen:
    only the consumer's own check can help. It must notice that it has no assignment, create the
    topic, get it assigned and consume what is sent there afterwards."""
    topic = kafka_topics.QUEUE_EVENTS_TOPIC
    calls = []
    real_ensure = consumer_module.ensure_topics

    def ensure_later(topics, **kwargs):
        calls.append(list(topics))
        if len(calls) == 1:  # start-up: as if the broker could not be listed then
            return []
        return real_ensure(topics, **kwargs)

    monkeypatch.setattr(consumer_module, "ensure_topics", ensure_later)
    got = []
    consumer = BatchConsumer(name="recovery-test", topics=[topic], handle=got.extend, batch_size=BATCH)
    errors = []
    consumer._on_error = errors.append  # as after the restart: no error reaches the consumer
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: _exists(topic), "the consumer to create its topic")
        produce(topic, [b"after"], key="k")
        _wait(lambda: len(got) == 1, "the message sent to the re-created topic")
    finally:
        consumer.stop()
        thread.join(GUARD)
    assert not thread.is_alive()
    assert [m.value() for m in got] == [b"after"]


def test_the_lag_is_what_this_member_has_not_read_yet(kafka_topics):
    """#12 (lag reporting, exact): with 20 messages on one partition and batches of 5, the lag reported
    while the second batch is handled is 10 (the high watermark 20 minus the 10 read), and 0 once all
    are read. Computed from what the client already holds (its position and the high watermark of
    its fetches): the report never waits on the broker inside the poll loop."""
    topic = kafka_topics.QUEUE_EVENTS_TOPIC
    ensure_topics([topic])
    produce(topic, [f"m{i}".encode() for i in range(4 * BATCH)], key="k")
    seen: list[dict] = []
    handled = []

    def handle(messages):
        handled.extend(messages)
        if len(handled) == 2 * BATCH:
            seen.append(consumer.lag())

    consumer = BatchConsumer(name="lag-test", topics=[topic], handle=handle, batch_size=BATCH)
    consumer.run(until=lambda: len(handled) == 4 * BATCH)
    assert seen == [{topic: 2 * BATCH}]


@pytest.fixture
def reported(kafka_topics):
    from kafkabus.signals import consumer_lag_measured

    values: list[tuple[str, int]] = []

    def receiver(sender, topic, lag, **kwargs):
        values.append((topic, lag))

    consumer_lag_measured.connect(receiver, weak=False)
    yield values
    consumer_lag_measured.disconnect(receiver)


def test_a_caught_up_consumer_reports_zero_lag(kafka_topics, reported):
    """#12 (lag reporting): a member that has read everything reports 0 for its topic (every
    KAFKA_LAG_LOG_SECONDS, 1 s in tests), so the gauge does not keep an old value."""
    topic = kafka_topics.QUEUE_EVENTS_TOPIC
    ensure_topics([topic])
    produce(topic, [b"x"] * 3, key="k")
    handled = []
    consumer = BatchConsumer(name="lag-test", topics=[topic], handle=handled.extend, batch_size=BATCH)
    deadline = time.monotonic() + GUARD
    consumer.run(until=lambda: (len(handled) == 3 and (topic, 0) in reported) or time.monotonic() > deadline)
    assert len(handled) == 3 and (topic, 0) in reported


def test_it_stores_each_partitions_last_offset(kafka_topics):
    """#12 (the consumer loop's cost per message): a batch's offsets are stored per partition, the
    next offset after its last message there, for every partition the batch holds (3 partitions,
    several keys): what the group commits is each partition's end, so nothing is delivered again."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import NewTopic
    from django.conf import settings

    topic = kafka_topics.QUEUE_EVENTS_TOPIC
    admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(20)
    for key in ("a", "b", "c", "d", "e"):
        produce(topic, [f"{key}{i}".encode() for i in range(7)], key=key)
    handled = []
    consumer = BatchConsumer(name="offsets-test", topics=[topic], handle=handled.extend, batch_size=100)
    consumer.run(until=lambda: len(handled) == 35)
    ends: dict[int, int] = {}
    for message in handled:
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)
    assert len(ends) > 1  # the keys spread over several partitions
    reader = Consumer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": kafka_topics.KAFKA_CONSUMER_GROUP})
    try:
        committed = reader.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    finally:
        reader.close()
    assert {tp.partition: tp.offset for tp in committed} == ends
