"""Issue #15 §9: tasks are sent with readable arguments (queue id, step name) for Flower, not `(24,)`.

Sent to the real Redis broker of the test session and read back from its list, as Flower's worker events
would carry them (`argsrepr` in the message headers)."""
from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings

from jobs.announce import QUEUE_ADVANCE, STEP_DISCARD, STEP_LAUNCH, enqueue
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db


def last_sent(task_name: str, args: list) -> dict:
    """The headers of the newest message for this task with these arguments in the broker's default queue."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for raw in client.lrange("celery", 0, 199):  # the broker LPUSHes: newest first
        message = json.loads(raw)
        headers = message["headers"]
        if headers.get("task") == task_name and headers.get("id") and _args(message) == args:
            return headers
    raise AssertionError(f"no {task_name}{args} in the broker")


def _args(message: dict) -> list:
    import base64

    body = json.loads(base64.b64decode(message["body"]))
    return body[0]


def test_it_names_the_queue_and_step_in_the_task_arguments():
    """§9 Flower shows task arguments as queue id and step name instead of `(24,)`."""
    queue = make_queue(queue_id="announce-q1")
    step = queue.steps.order_by("position").first()
    enqueue(QUEUE_ADVANCE, queue.pk)
    enqueue(STEP_LAUNCH, step.pk)
    enqueue(STEP_DISCARD, step.pk, step.job_name)

    assert last_sent(QUEUE_ADVANCE, [queue.pk])["argsrepr"] == "(queue=announce-q1)"
    assert last_sent(STEP_LAUNCH, [step.pk])["argsrepr"] == f"(queue=announce-q1, step={step.name})"
    assert last_sent(STEP_DISCARD, [step.pk, step.job_name])["argsrepr"] == (
        f"(queue=announce-q1, step={step.name}, job={step.job_name})"
    )


def test_it_still_sends_a_task_whose_row_is_gone():
    """§9 a task for a row deleted meanwhile is still sent; its arguments read as the bare id."""
    enqueue(STEP_LAUNCH, 987654321)
    assert last_sent(STEP_LAUNCH, [987654321])["argsrepr"] == "(step #987654321 (gone))"
