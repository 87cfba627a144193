"""Whole pipelines driven through Kafka: a `start` command from a stock client on queue-control, the
steps' telemetry on queue-events ingested by `consume_queue_events`, records through the data topics,
and `stop` commands obeyed by the steps themselves."""
from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Producer

from queues.models import Queue, QueueStatus, StepState, TelemetryEvent
from tests.e2e.conftest import group_alive, status_is, wait_for
from tests.kafkabus.conftest import events_of, read_topic

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


def send_command(bootstrap: str, topic: str, command: dict) -> None:
    """What an operator's tool does: a plain producer, no manager code."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, json.dumps(command).encode(), key=(command.get("queue_id") or "").encode() or None)
    assert producer.flush(10) == 0, "the broker did not take the command"


def wait(kafka_pipeline, predicate, *, timeout: float, message: str):
    """wait_for, with the worker's and both consumers' logs on failure."""
    try:
        return wait_for(predicate, timeout=timeout, message=message)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{kafka_pipeline.logs()}") from None


def start_by_kafka(kafka_pipeline, payload: dict) -> Queue:
    queue_id = f"kafka-e2e-{uuid.uuid4().hex[:8]}"
    command = {"command": "start", "command_id": f"start-{queue_id}", "queue_id": queue_id, **payload}
    send_command(kafka_pipeline.topics.KAFKA_BOOTSTRAP_SERVERS, kafka_pipeline.topics.QUEUE_CONTROL_TOPIC, command)
    return wait(
        kafka_pipeline, lambda: Queue.objects.filter(queue_id=queue_id).first(),
        timeout=30, message=f"queue {queue_id} created from the start command",
    )




def assert_all_telemetry_came_by_kafka(queue) -> None:
    sources = set(TelemetryEvent.objects.filter(queue=queue).values_list("source", flat=True))
    assert sources == {"kafka"}, sources
    for step in queue.steps.all():
        assert step.events.filter(status="started").exists(), step.name


def test_it_runs_the_historical_pipeline_from_a_kafka_start_with_kafka_telemetry(kafka_pipeline, historical_payload):
    queue = start_by_kafka(kafka_pipeline, historical_payload)
    wait(kafka_pipeline, status_is(queue, *QueueStatus.TERMINAL), timeout=80, message="historical queue ends")
    steps = {s.name: s for s in queue.steps.all()}
    assert queue.status == QueueStatus.SUCCEEDED, {n: (s.state, s.message) for n, s in steps.items()}
    assert_all_telemetry_came_by_kafka(queue)
    for step in steps.values():
        assert kafka_pipeline.starts_of(step) == 1, step.name
        assert step.records_written > 0, step.name
    # Real records went through each data topic: the connector read exactly what its loader had confirmed.
    loaders = [s for s in steps.values() if s.target == "loader-producer"]
    assert loaders
    for loader in loaders:
        connector = queue.steps.get(target="arango-connector", kafka_topic=loader.kafka_topic)
        assert connector.records_written == loader.records_written, (loader.name, connector.name)
        assert "Drained" in connector.message
        on_topic = read_topic(loader.kafka_topic, expect=loader.records_written + 1, timeout=3)
        assert len(on_topic) == loader.records_written, loader.kafka_topic
        assert {"symbol", "type", "seq", "price"} <= set(json.loads(on_topic[0].value()))


def test_it_stops_the_realtime_pipeline_with_a_kafka_stop_the_steps_obey(kafka_pipeline, realtime_payload):
    queue = start_by_kafka(kafka_pipeline, realtime_payload)
    wait(
        kafka_pipeline, lambda: queue.steps.filter(state=StepState.RUNNING).count() == 7,
        timeout=60, message="all seven realtime steps running",
    )
    pgids = [json.loads((kafka_pipeline.step_dir(s) / "process.json").read_text())["pgid"] for s in queue.steps.all()]
    assert all(group_alive(p) for p in pgids)

    stop_id = f"stop-{queue.queue_id}"
    send_command(
        kafka_pipeline.topics.KAFKA_BOOTSTRAP_SERVERS, kafka_pipeline.topics.QUEUE_CONTROL_TOPIC,
        {"command": "stop", "command_id": stop_id, "queue_id": queue.queue_id},
    )
    wait(kafka_pipeline, status_is(queue, QueueStatus.STOPPED), timeout=40, message="realtime queue stopped")
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}
    wait_for(lambda: not any(group_alive(p) for p in pgids), timeout=10, message="no step process left")

    steps = list(queue.steps.all())
    # Stopped gracefully: every worker reported interrupted, then finished — through Kafka (the exit
    # the launcher saw may be recorded before the last events are ingested).
    wait(
        kafka_pipeline,
        lambda: all(set(s.events.values_list("status", flat=True)) >= {"started", "interrupted", "finished"} for s in steps),
        timeout=15, message="interrupted and finished from every step",
    )
    obeyed = [s.name for s in steps if "stop command qm-stop-" in (kafka_pipeline.step_dir(s) / "output.log").read_text()]
    # The launcher's SIGTERM follows the confirmed publish at once, so a step may see either first;
    # steps that read the command log its id (most do, with the command checked first each tick).
    assert obeyed, "no step logged the stop command it received on queue-control"
    assert_all_telemetry_came_by_kafka(queue)

    # The manager also published one confirmed stop per step, each with a command_id of its own.
    control = events_of(read_topic(kafka_pipeline.topics.QUEUE_CONTROL_TOPIC, expect=2 + len(steps), timeout=10))
    own_stops = [c for c in control if c.get("command") == "stop" and c.get("origin") == "queue-manager"]
    assert {c["telemetry_id"] for c in own_stops} == {s.telemetry_id for s in steps}
    assert all(c["command_id"].startswith("qm-stop-") and c["queue_id"] == queue.queue_id for c in own_stops)
    assert len({c["command_id"] for c in own_stops}) == len(own_stops)
