"""Kafka as a client of the product sees it: produce raw bytes, read a whole topic back, measure lag."""
from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


class Client:
    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self._producer: Producer | None = None

    def ensure_topics(self, topics: list[str], timeout: float = 30.0) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        existing = set(admin.list_topics(timeout=10).topics)
        missing = [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics if t not in existing]
        if missing:
            for future in admin.create_topics(missing, request_timeout=timeout).values():
                try:
                    future.result()
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all",
                                       "enable.idempotence": False, "message.timeout.ms": 60000})
        return self._producer

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                return
            except BufferError:
                self.producer.poll(0.1)

    def flush(self, timeout: float = 60.0) -> None:
        left = self.producer.flush(timeout)
        if left:
            raise RuntimeError(f"{left} messages not delivered to Kafka within {timeout}s")

    def read_all(self, topic: str, timeout: float = 120.0, idle: float = 3.0) -> list[Record]:
        """Every message of `topic` from the beginning until nothing new arrives for `idle` seconds.

        Not up to the reported high watermark: tansu can report one lower than the offsets it
        serves (seen with its memory engine), which would silently cut the tail off.
        """
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"chaos-reader-{time.time_ns()}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return []
            consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
            records: list[Record] = []
            deadline = time.monotonic() + timeout
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < idle:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{topic} kept growing for {timeout}s while being read")
                batch = [m for m in consumer.consume(500, 0.5) if not m.error()]
                if batch:
                    quiet_since = time.monotonic()
                for message in batch:
                    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])}
                    records.append(Record(message.key(), message.value(), headers, message.partition(), message.offset()))
            return records
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        """partition -> offset after its last message, found by reading (see read_all)."""
        ends: dict[int, int] = {}
        for record in self.read_all(topic, idle=2.0):
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        return ends

    def lag(self, topic: str, group: str) -> int:
        """Messages of `topic` the consumer group has not committed yet (all partitions)."""
        ends = self.end_offsets(topic)
        if not ends:
            return 0
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
            return sum(max(0, ends[tp.partition] - max(tp.offset, 0)) for tp in committed)
        finally:
            consumer.close()
