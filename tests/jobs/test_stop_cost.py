"""Issue #12 Stop ("from the stop request to every workload gone <= grace + 2 s, for 50 steps at once").

The request records the stop and announces the tasks; it never calls the cluster (the bench measured
2.1 s for `queue_stop` of 10 queues holding 50 steps while it ran those tasks inline). The tasks do the
rest, one pair per queue: `queue_send_stop` (the commands), then `queue_force_stop` at the end of the
grace period (one delete-collection of the queue's stopping steps' Jobs). Counts,
never timings; the cluster is the emulator, the broker the test session's Redis (nothing runs eagerly).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import launching, scheduler
from jobs.services import queue_stop
from jobs.submission import queue_create
from jobs.stopping import queue_force_stop, queue_send_stop
from queues.models import QueueRequest, StepState
from tests.helpers import wait_until
from tests.jobs.helpers import broker_task_names_since
from tests.jobs.test_kubernetes_pipeline import cluster_jobs_of, k8s_pipeline  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

PER_STEP = 0  # the queue's steps are marked in two UPDATEs whatever their number (mirror off here)


def _running_queue(queue_id: str, steps: int, controller):
    """A queue of `steps` independent loader steps, each launched as a Job with a running pod."""
    requests = [{"target": "loader-producer", "type": "api_candles_5m", "name": f"load-{i}"} for i in range(steps)]
    queue, _ = queue_create(payload={"symbol": "BTCUSDT", "time_range": "2024-06-01:2024-06-30", "requests": requests},
                            queue_id=queue_id)
    scheduler.queue_advance(queue.pk)
    for pk in QueueRequest.objects.filter(queue=queue, state=StepState.LAUNCHING).values_list("pk", flat=True):
        assert launching.step_launch(pk) == "launched"
    for name in cluster_jobs_of(controller, queue):
        controller.mark_running(name)
    QueueRequest.objects.filter(queue=queue).update(state=StepState.RUNNING)
    assert len(cluster_jobs_of(controller, queue)) == steps
    return queue


def _stop_request(queue, emulator, capture):
    """`queue_stop` as a view runs it, with its on-commit announcements: (queries, Kubernetes API calls,
    names of the tasks that reached the broker, read back from Redis)."""
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    calls, sent = len(emulator.requests), client.llen("celery")
    with CaptureQueriesContext(connection) as queries, capture(execute=True):
        queue_stop(queue=queue, reason="test")
    tasks = broker_task_names_since(client, sent)
    return len(queries), emulator.requests[calls:], tasks


def test_a_stop_request_makes_a_bounded_number_of_queries_per_step_and_no_cluster_call(
    k8s_pipeline, emulator, django_capture_on_commit_callbacks  # noqa: F811 (fixture)
):
    """Stop, the request: as many queries and broker messages for 10 steps as for 5 (before: one query and two
    tasks per step; earlier still two queries, the queue's change count raised once per step), and no
    Kubernetes API call."""
    small, large = _running_queue("stop-cost-5", 5, k8s_pipeline), _running_queue("stop-cost-10", 10, k8s_pipeline)
    small_queries, small_calls, small_tasks = _stop_request(small, emulator, django_capture_on_commit_callbacks)
    large_queries, large_calls, large_tasks = _stop_request(large, emulator, django_capture_on_commit_callbacks)
    assert small_calls == [] and large_calls == []
    assert large_queries - small_queries <= 5 * PER_STEP, (small_queries, large_queries)
    assert len(large_tasks) == len(small_tasks), (small_tasks, large_tasks)
    assert set(large.steps.values_list("state", flat=True)) == {StepState.STOPPING}


def test_fifty_steps_stopped_at_once_leave_no_workload_after_the_forced_stop(
    k8s_pipeline, emulator, settings, django_capture_on_commit_callbacks  # noqa: F811 (fixture)
):
    """Stop, 50 steps at once (10 queues): the tasks the request announced remove every Job and pod, and the
    next reconcile pass ends every step stopped."""
    controller = k8s_pipeline
    settings.STOP_GRACE_SECONDS = 30
    queues = [_running_queue(f"stop-fifty-{i}", 5, controller) for i in range(10)]
    for queue in queues:
        assert _stop_request(queue, emulator, django_capture_on_commit_callbacks)[1] == []
    stopping = list(QueueRequest.objects.filter(queue__in=queues).values_list("pk", flat=True))
    assert len(stopping) == 50
    for queue in queues:  # what the worker runs: the commands, then the forced stop at its ETA
        assert queue_send_stop(queue.pk) == 5
    QueueRequest.objects.filter(pk__in=stopping).update(stop_requested_at=timezone.now() - timedelta(seconds=31))
    deletes = len(emulator.requests_matching("DELETE", r"/jobs(/[^/]+)?$"))
    assert [queue_force_stop(queue.pk) for queue in queues] == [5] * 10
    assert len(emulator.requests_matching("DELETE", r"/jobs(/[^/]+)?$")) - deletes == 10  # one per queue
    assert [name for queue in queues for name in cluster_jobs_of(controller, queue)] == []
    wait_until(lambda: [p for q in queues for p in controller.pods(label_selector=f"streamforge.io/queue-id={q.queue_id}")]
               == [], message="the pods of the deleted Jobs are gone")
    scheduler.reconcile()
    assert set(QueueRequest.objects.filter(pk__in=stopping).values_list("state", flat=True)) == {StepState.STOPPED}
