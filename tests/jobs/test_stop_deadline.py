"""Issue #12 (Stop): the forced stop happens at the end of the grace period itself, not on the first
reconcile pass after it. A stop announces `step_force_stop` with its ETA at stop_requested_at + grace;
the task is idempotent, does nothing before the deadline, and removes the workload after it.

The announcement is read back from the real Redis broker of the test session; the cluster is the
emulator (the scheduler called directly, as the task would)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from jobs import scheduler
from jobs.announce import STEP_FORCE_STOP
from jobs.services import queue_stop, step_stop
from queues.models import QueueRequest, StepState
from tests.jobs.helpers import put
from tests.jobs.test_announce import last_sent
from tests.jobs.test_kubernetes_pipeline import cluster_jobs_of, k8s_pipeline, start  # noqa: F401 (fixture)
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db


def test_a_stop_announces_the_forced_stop_for_the_end_of_the_grace_period(settings, django_capture_on_commit_callbacks):
    """Stop: the force-stop task is announced on a stop, due exactly when the grace period ends."""
    settings.STOP_GRACE_SECONDS = 42
    queue = make_queue(queue_id="force-stop-eta")
    step = put(queue.steps.order_by("position").first(), StepState.RUNNING, job_name="force-stop-eta-job")
    with django_capture_on_commit_callbacks(execute=True):
        step_stop(step=step, reason="test")
    step.refresh_from_db()
    assert step.state == StepState.STOPPING
    headers = last_sent(STEP_FORCE_STOP, [step.pk])
    assert datetime.fromisoformat(headers["eta"]) == step.stop_requested_at + timedelta(seconds=42)


def test_the_forced_stop_does_nothing_before_the_deadline_and_removes_the_workloads_after_it(
    k8s_pipeline, realtime_queue, settings  # noqa: F811 (fixture)
):
    """Stop: running the force-stop task early does nothing; after the deadline it deletes every Job."""
    controller, queue = k8s_pipeline, realtime_queue
    settings.STOP_GRACE_SECONDS = 30
    start(queue)
    jobs = cluster_jobs_of(controller, queue)
    assert jobs
    queue_stop(queue=queue, reason="test")
    stopping = list(QueueRequest.objects.filter(queue=queue, state=StepState.STOPPING).values_list("pk", flat=True))
    assert stopping

    for pk in stopping:  # early (a redelivered or eagerly run task): the workers still have their grace period
        scheduler.step_force_stop(pk)
    assert sorted(cluster_jobs_of(controller, queue)) == sorted(jobs)

    # The deadline passed (moved back rather than waited for).
    QueueRequest.objects.filter(pk__in=stopping).update(stop_requested_at=datetime.now().astimezone() - timedelta(seconds=31))
    for pk in stopping:
        scheduler.step_force_stop(pk)
    assert cluster_jobs_of(controller, queue) == []
    for pk in stopping:  # idempotent: a second run finds nothing to remove and raises nothing
        scheduler.step_force_stop(pk)
