"""Kafka for the worker simulator (devtools.simulator): telemetry out, stop commands in, records through data topics.

Runs inside a step process, like a real worker: no Django, only the step's environment (DESIGN §7):
KAFKA_BOOTSTRAP_SERVERS, KAFKA_USER/KAFKA_PASSWORD (SASL_SSL + SCRAM-SHA-512 when set), KAFKA_CA_PATH
or CA_PATH, QUEUE_EVENTS_TOPIC (alias TELEMETRY_TOPIC), QUEUE_CONTROL_TOPIC (alias CONTROL_TOPIC),
KAFKA_TOPIC, QUEUE_ID, TELEMETRY_PRODUCER_ID, TARGET, STEP_RUN.

`kafka_io(env)` returns `(sink, data)`:
- sink.send(event) produces telemetry keyed by queue_id; sink.stop_requested() says whether a `stop`
  addressed to this step arrived on the control topic since the step started;
- data.produce(count) (loaders) writes records to KAFKA_TOPIC and returns how many the broker
  confirmed; data.consume(pace) (connectors) returns how many records it read this tick.
"""
from __future__ import annotations

import json
import random
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from devtools.simulator import step_run
from devtools.simulator.data import SimulatedData  # steps that neither load nor consume a data topic
from kafkabus.connection import connection_config

# Join a consumer group in seconds rather than tens of seconds (a step must not wait for its data).
FAST_GROUP = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 60000,
    # A subscribed topic that does not exist yet is looked for again soon.
    "topic.metadata.refresh.interval.ms": 1000,
}
MANAGER_ORIGIN = "queue-manager"  # kafkabus.config.ORIGIN (that module needs Django)
CONSUME_MAX = 5000  # records a connector reads per tick at most
CLOSE_TIMEOUT = 10.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def client_config(env: dict, client_id: str) -> dict:
    return connection_config(
        bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS", ""),
        user=env.get("KAFKA_USER", ""),
        password=env.get("KAFKA_PASSWORD", ""),
        ca_path=env.get("KAFKA_CA_PATH") or env.get("CA_PATH") or "",
        client_id=client_id,
    )


def is_stop_for(command, *, queue_id: str, telemetry_id: str, target: str, run: int | None = None) -> bool:
    """A `stop` the manager sent to this step: same queue, and its telemetry id, or its target, or
    neither (whole queue); and this step run, when the command names one (`run`) — a retried step's
    worker ignores the stop its previous run was sent (same queue, same telemetry id).

    Only the manager's own commands (`origin`) count: an operator's `stop` on the same topic is
    addressed to the manager, which records the stop first and then tells each step. A step that
    stopped on the operator's command directly could report `interrupted` before the manager knew
    of any stop, and end failed instead of stopped.
    """
    if not isinstance(command, dict) or str(command.get("command", "")).lower() != "stop":
        return False
    if command.get("origin") != MANAGER_ORIGIN:
        return False
    if command.get("queue_id") != queue_id:
        return False
    if run is not None and command.get("run") is not None and command["run"] != run:
        return False
    if command.get("telemetry_id"):
        return command["telemetry_id"] == telemetry_id
    if command.get("target"):
        return command["target"] == target
    return True


class KafkaSink:
    """Telemetry to the events topic; `stop` commands from the control topic."""

    def __init__(self, env: dict):
        self.queue_id = env["QUEUE_ID"]
        self.telemetry_id = env["TELEMETRY_PRODUCER_ID"]
        self.target = env.get("TARGET") or self.telemetry_id.split("__", 1)[0]
        self.run = step_run(env)
        self.events_topic = env.get("QUEUE_EVENTS_TOPIC") or env.get("TELEMETRY_TOPIC") or "queue-events"
        self.control_topic = env.get("QUEUE_CONTROL_TOPIC") or env.get("CONTROL_TOPIC") or "queue-control"
        config = client_config(env, self.telemetry_id)
        self.producer = Producer({**config, "acks": "all", "linger.ms": 5})
        self.failed = 0
        self.last_error = ""
        self.stop_command: dict | None = None
        self.control = self._control_consumer(config)

    def _control_consumer(self, config: dict) -> Consumer:
        # A group of its own: every step must see every command. It reads from the end offsets taken
        # now, before `started` is reported, so a stop sent right after the start is not missed.
        consumer = Consumer(
            {
                **config,
                "group.id": f"{self.telemetry_id}-control-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,  # a stop is acted on within a tick or two
                **FAST_GROUP,
            }
        )
        metadata = consumer.list_topics(self.control_topic, timeout=10).topics.get(self.control_topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            # The topic does not exist yet, so whatever it will hold is newer than this step.
            consumer.subscribe([self.control_topic])
            return consumer
        partitions = []
        for number in metadata.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(self.control_topic, number), timeout=10)
            partitions.append(TopicPartition(self.control_topic, number, high))
        consumer.assign(partitions)
        return consumer

    def send(self, event: dict) -> None:
        value = json.dumps(event, separators=(",", ":")).encode()
        while True:
            try:
                self.producer.produce(self.events_topic, value=value, key=self.queue_id.encode(), on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = str(err)

    def stop_requested(self) -> bool:
        if self.stop_command is not None:
            return True
        for message in self.control.consume(num_messages=100, timeout=0):
            if message.error() is not None:
                continue  # partition EOF, broker restarting: the consumer keeps trying
            try:
                command = json.loads(message.value())
            except (TypeError, ValueError):
                continue
            if is_stop_for(command, queue_id=self.queue_id, telemetry_id=self.telemetry_id, target=self.target,
                           run=self.run):
                self.stop_command = command
                log(f"stop command {command.get('command_id') or '(no command_id)'} received on {self.control_topic}")
                return True
        return False

    def close(self) -> None:
        left = self.producer.flush(CLOSE_TIMEOUT)
        if left or self.failed:
            log(f"telemetry not confirmed: {left} pending, {self.failed} failed ({self.last_error})")
        self.control.close()


class KafkaLoaderData:
    """A loader's records, produced to KAFKA_TOPIC; only confirmed deliveries count."""

    def __init__(self, env: dict):
        self.topic = env["KAFKA_TOPIC"]
        self.symbol = env.get("SYMBOL") or ""
        self.type = env.get("TYPE") or ""
        self.seq = 0
        self.producer = Producer({**client_config(env, env["TELEMETRY_PRODUCER_ID"]), "acks": "all", "linger.ms": 10})

    def produce(self, count: int) -> int:
        delivered = [0]

        def on_delivery(err, msg):
            if err is None:
                delivered[0] += 1

        for _ in range(count):
            self.seq += 1
            record = {"symbol": self.symbol, "type": self.type, "seq": self.seq,
                      "price": round(random.uniform(10_000, 100_000), 2), "ts": time.time()}
            while True:
                try:
                    self.producer.produce(self.topic, value=json.dumps(record).encode(), key=self.symbol.encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.1)
        self.producer.flush(CLOSE_TIMEOUT)
        return delivered[0]

    def consume(self, pace: int) -> int:
        return pace

    def close(self) -> None:
        self.producer.flush(CLOSE_TIMEOUT)


class KafkaConnectorData:
    """A connector's input: every record on KAFKA_TOPIC, read by its own consumer group."""

    def __init__(self, env: dict):
        self.topic = env["KAFKA_TOPIC"]
        config = client_config(env, env["TELEMETRY_PRODUCER_ID"])
        self._ensure_topic(config)
        self.consumer = Consumer(
            {
                **config,
                "group.id": f"{env['QUEUE_ID']}-{env['TELEMETRY_PRODUCER_ID']}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                **FAST_GROUP,
            }
        )
        self.consumer.subscribe([self.topic])

    def _ensure_topic(self, config: dict) -> None:
        # Connectors start before their loaders: create the topic so the subscription finds it.
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(config)  # kept referenced until the answer arrived
        futures = admin.create_topics([NewTopic(self.topic, num_partitions=1, replication_factor=1)])
        try:
            futures[self.topic].result(timeout=10)
        except Exception as exc:  # already there (a loader was first), or the broker decides: subscribe anyway
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                log(f"could not create {self.topic}: {exc}")

    def produce(self, count: int) -> int:
        return count

    def consume(self, pace: int) -> int:
        read = 0
        for message in self.consumer.consume(num_messages=CONSUME_MAX, timeout=0.2):
            if message.error() is None:
                read += 1
        return read

    def close(self) -> None:
        self.consumer.close()


def kafka_io(env: dict):
    target = env.get("TARGET") or env["TELEMETRY_PRODUCER_ID"].split("__", 1)[0]
    if target == "loader-producer" and env.get("KAFKA_TOPIC"):
        data = KafkaLoaderData(env)
    elif target == "arango-connector" and env.get("KAFKA_TOPIC"):
        data = KafkaConnectorData(env)
    else:
        data = SimulatedData()
    return KafkaSink(env), data
