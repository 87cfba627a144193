"""A stop command names the step run it is for, and a worker of another run ignores it.

Found in `make run`: retrying a stopped realtime queue, both connectors of the new run stopped within
a second of starting ("Stopped by the worker after an interruption the manager did not request") —
their worker had read the previous run's `stop` from queue-control (same queue, same telemetry id) and
obeyed it. The manager now sends the run (`run`, the STEP_RUN its workers were given), and the
simulator, like any worker should, obeys only a stop for its own run (or one that names none).
"""
from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition

from devtools.simulator.kafka_io import KafkaSink
from kafkabus.publisher import publish_stop
from queues.models import QueueRequest, StepState
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db(transaction=True)


def _stop_requested_within(sink: KafkaSink, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sink.stop_requested():
            return True
        time.sleep(0.05)
    return False


def test_a_retried_steps_worker_ignores_the_stop_its_previous_run_was_sent(kafka_topics, kafka_env):
    queue = make_queue(queue_id="stop-runs", first_advance=False)
    step = queue.steps.get(position=0)
    QueueRequest.objects.filter(pk=step.pk).update(state=StepState.RUNNING)
    step.refresh_from_db()
    old = publish_stop(step)  # run 1 is stopped
    assert old["run"] == 1

    QueueRequest.objects.filter(pk=step.pk).update(run=2)  # retried: run 2 starts
    step.refresh_from_db()
    env = {**kafka_env, "QUEUE_ID": queue.queue_id, "TELEMETRY_PRODUCER_ID": step.telemetry_id,
           "TARGET": step.target, "STEP_RUN": "2"}
    sink = KafkaSink(env)
    try:
        # Read the control topic from its start, as a worker whose position is older than the command
        # does (a consumer group's committed offset, or `earliest` before the topic's metadata came).
        topic = kafka_topics.QUEUE_CONTROL_TOPIC
        partitions = sink.control.list_topics(topic, timeout=10).topics[topic].partitions
        sink.control.assign([TopicPartition(topic, number, 0) for number in partitions])
        assert not _stop_requested_within(sink, 3.0), "run 2 obeyed the stop sent to run 1"

        current = publish_stop(step)
        assert current["run"] == 2
        assert _stop_requested_within(sink, 20.0)
        assert sink.stop_command["command_id"] == current["command_id"]
    finally:
        sink.close()
