"""Issue #12 Stop ("from the stop request to every workload gone <= grace + 2 s, for 50 steps at once").

The request records the stop and announces the tasks; it never calls the cluster (the bench measured
2.1 s for `queue_stop` of 10 queues holding 50 steps while it ran those tasks inline). The tasks do the
rest: `step_send_stop` (the command), then `step_force_stop` at the end of the grace period. Counts,
never timings; the cluster is the emulator, the broker the test session's Redis (nothing runs eagerly).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import scheduler
from jobs.services import queue_create, queue_stop
from queues.models import QueueRequest, StepState
from tests.helpers import wait_until
from tests.jobs.test_kubernetes_pipeline import cluster_jobs_of, k8s_pipeline  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

PER_STEP = 1  # the step's compare-and-set (the queue's change is counted once per stop; mirror off here)


def _running_queue(queue_id: str, steps: int, controller):
    """A queue of `steps` independent loader steps, each launched as a Job with a running pod."""
    requests = [{"target": "loader-producer", "type": "api_candles_5m", "name": f"load-{i}"} for i in range(steps)]
    queue, _ = queue_create(payload={"symbol": "BTCUSDT", "time_range": "2024-06-01:2024-06-30", "requests": requests},
                            queue_id=queue_id)
    scheduler.queue_advance(queue.pk)
    for pk in QueueRequest.objects.filter(queue=queue, state=StepState.LAUNCHING).values_list("pk", flat=True):
        assert scheduler.step_launch(pk) == "launched"
    for name in cluster_jobs_of(controller, queue):
        controller.mark_running(name)
    QueueRequest.objects.filter(queue=queue).update(state=StepState.RUNNING)
    assert len(cluster_jobs_of(controller, queue)) == steps
    return queue


def _stop_request(queue, emulator, capture):
    """`queue_stop` as a view runs it, with its on-commit announcements: (queries, Kubernetes API calls)."""
    calls = len(emulator.requests)
    with CaptureQueriesContext(connection) as queries, capture(execute=True):
        queue_stop(queue=queue, reason="test")
    return len(queries), emulator.requests[calls:]


def test_a_stop_request_makes_a_bounded_number_of_queries_per_step_and_no_cluster_call(
    k8s_pipeline, emulator, django_capture_on_commit_callbacks  # noqa: F811 (fixture)
):
    """Stop, the request: one query per step (the difference between 10 and 5 steps; before, two: the queue's
    change count was raised once per step) and no Kubernetes API call."""
    small, large = _running_queue("stop-cost-5", 5, k8s_pipeline), _running_queue("stop-cost-10", 10, k8s_pipeline)
    small_queries, small_calls = _stop_request(small, emulator, django_capture_on_commit_callbacks)
    large_queries, large_calls = _stop_request(large, emulator, django_capture_on_commit_callbacks)
    assert small_calls == [] and large_calls == []
    assert large_queries - small_queries <= 5 * PER_STEP, (small_queries, large_queries)
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
    for pk in stopping:  # what the worker runs: the command, then the forced stop at its ETA
        scheduler.step_send_stop(pk)
    QueueRequest.objects.filter(pk__in=stopping).update(stop_requested_at=timezone.now() - timedelta(seconds=31))
    assert all(scheduler.step_force_stop(pk) for pk in stopping)
    assert [name for queue in queues for name in cluster_jobs_of(controller, queue)] == []
    wait_until(lambda: [p for q in queues for p in controller.pods(label_selector=f"streamforge.io/queue-id={q.queue_id}")]
               == [], message="the pods of the deleted Jobs are gone")
    scheduler.reconcile()
    assert set(QueueRequest.objects.filter(pk__in=stopping).values_list("state", flat=True)) == {StepState.STOPPED}
