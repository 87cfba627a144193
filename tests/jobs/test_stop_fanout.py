"""Issue #12 Stop ("from the stop request to every workload gone <= grace + 2 s, for 50 steps at once"):
a queue's stop fans out in the worker.

The request marks the queue's steps in a constant number of queries and announces two tasks per queue
(the commands now, the forced stop at the end of the grace), not two per step; the forced stop removes
the stopping steps' Jobs with one delete-collection per queue, and never a Job of a step that is not
being stopped. Reconcile still forces a stop whose tasks were lost. Counts, never timings; the cluster
is the emulator acting as the deploy Role, the broker the test session's Redis.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import launching, scheduler
from jobs.announce import QUEUE_FORCE_STOP, QUEUE_SEND_STOP, STEP_FORCE_STOP, STEP_SEND_STOP
from jobs.services import queue_retry, queue_stop, step_transition
from jobs.stopping import queue_force_stop, queue_send_stop
from queues.models import QueueRequest, StepState
from tests.helpers import wait_until
from tests.jobs.helpers import broker_task_names_since
from tests.jobs.test_announce import last_sent
from tests.jobs.test_kubernetes_pipeline import cluster_jobs_of, k8s_pipeline  # noqa: F401 (fixture)
from tests.jobs.test_stop_cost import _running_queue

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
JOB_DELETES = r"/namespaces/[^/]+/jobs(/[^/]+)?$"  # one Job, or the collection


def _past_grace(queue, seconds=31):
    """Move the stop back past the grace period (rather than wait for it)."""
    QueueRequest.objects.filter(queue=queue, state=StepState.STOPPING).update(
        stop_requested_at=datetime.now().astimezone() - timedelta(seconds=seconds))


def _announced(capture, queue):
    """`queue_stop` as a view runs it, with its on-commit announcements: the queries, and the names of the
    tasks that reached the broker (read back from Redis)."""
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    before = client.llen("celery")
    with CaptureQueriesContext(connection) as queries, capture(execute=True):
        queue_stop(queue=queue, reason="test")
    sent = broker_task_names_since(client, before)
    return len(queries), sent


def test_a_stop_request_costs_the_same_queries_and_tasks_whatever_the_number_of_steps(
    k8s_pipeline, settings, django_capture_on_commit_callbacks  # noqa: F811 (fixture)
):
    """Stop, the request: the same number of queries and of tasks for 10 steps as for 5 (before: one query
    and two tasks per step), one command task and one forced stop per queue, none per step."""
    small, large = _running_queue("fan-5", 5, k8s_pipeline), _running_queue("fan-10", 10, k8s_pipeline)
    small_queries, small_tasks = _announced(django_capture_on_commit_callbacks, small)
    large_queries, large_tasks = _announced(django_capture_on_commit_callbacks, large)
    assert large_queries == small_queries, (small_queries, large_queries)
    assert sorted(large_tasks) == sorted(small_tasks)
    assert large_tasks.count(QUEUE_SEND_STOP) == 1 and large_tasks.count(QUEUE_FORCE_STOP) == 1
    assert STEP_SEND_STOP not in large_tasks and STEP_FORCE_STOP not in large_tasks
    assert set(large.steps.values_list("state", flat=True)) == {StepState.STOPPING}


def test_the_queue_forced_stop_is_announced_for_the_end_of_the_grace_period(
    k8s_pipeline, settings, django_capture_on_commit_callbacks  # noqa: F811 (fixture)
):
    """Stop: the queue's forced stop is sent to the broker due exactly when the grace period ends."""
    settings.STOP_GRACE_SECONDS = 42
    queue = _running_queue("fan-eta", 2, k8s_pipeline)
    with django_capture_on_commit_callbacks(execute=True):
        queue_stop(queue=queue, reason="test")
    queue.refresh_from_db()
    headers = last_sent(QUEUE_FORCE_STOP, [queue.pk])
    assert datetime.fromisoformat(headers["eta"]) == queue.stop_requested_at + timedelta(seconds=42)
    assert last_sent(QUEUE_SEND_STOP, [queue.pk]).get("eta") is None


def test_the_queue_forced_stop_deletes_its_jobs_in_one_call_and_nothing_early(
    k8s_pipeline, emulator, settings  # noqa: F811 (fixture)
):
    """Stop, the forced half: nothing before the grace ends; after it, one delete-collection for the queue's
    5 steps (no per-Job delete), every Job and pod gone; a redelivered task finds nothing to do."""
    controller = k8s_pipeline
    settings.STOP_GRACE_SECONDS = 30
    queue = _running_queue("fan-force", 5, controller)
    queue_stop(queue=queue, reason="test")
    assert queue_send_stop(queue.pk) == 5
    jobs = cluster_jobs_of(controller, queue)
    assert len(jobs) == 5
    assert queue_force_stop(queue.pk) == 0  # early: the workers still have their grace period
    assert sorted(cluster_jobs_of(controller, queue)) == sorted(jobs)

    _past_grace(queue)
    before = len(emulator.requests_matching("DELETE", JOB_DELETES))
    assert queue_force_stop(queue.pk) == 5
    deletes = emulator.requests_matching("DELETE", JOB_DELETES)[before:]
    assert len(deletes) == 1 and deletes[0][1].rstrip("/").endswith("/jobs"), deletes
    assert cluster_jobs_of(controller, queue) == []
    wait_until(lambda: controller.pods(label_selector=f"streamforge.io/queue-id={queue.queue_id}") == [],
               message="the garbage collector removes the pods of the deleted Jobs")
    scheduler.reconcile()
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}
    assert queue_force_stop(queue.pk) == 0  # redelivered: nothing is stopping any more


def test_the_queue_forced_stop_never_deletes_a_job_of_a_step_not_being_stopped(
    k8s_pipeline, settings, django_capture_on_commit_callbacks  # noqa: F811 (fixture)
):
    """Stop, never too much: a step that obeyed the stop and was retried (its `-r2` Job, launched during the
    others' grace) and another queue's Jobs survive the queue's forced stop; only the steps still stopping
    lose theirs."""
    controller = k8s_pipeline
    settings.STOP_GRACE_SECONDS = 30
    queue, other = _running_queue("fan-keep", 3, controller), _running_queue("fan-other", 2, controller)
    other_jobs = sorted(cluster_jobs_of(controller, other))
    with django_capture_on_commit_callbacks(execute=True):
        queue_stop(queue=queue, reason="test")
    obeyed = queue.steps.order_by("position").first()
    # Its worker obeyed (telemetry `interrupted`); the worker's discard task removes that run's Job.
    assert step_transition(obeyed, StepState.STOPPED, from_states=[StepState.STOPPING], message="Stopped.")
    scheduler.step_discard(obeyed.pk, job_name=obeyed.job_name)
    assert obeyed.job_name not in cluster_jobs_of(controller, queue)
    assert queue_retry(queue=queue) == 1
    scheduler.queue_advance(queue.pk)
    obeyed.refresh_from_db()
    assert obeyed.run == 2 and obeyed.state == StepState.LAUNCHING
    assert launching.step_launch(obeyed.pk) == "launched"
    retried_job = obeyed.job_name
    assert retried_job in cluster_jobs_of(controller, queue)

    _past_grace(queue)
    assert queue_force_stop(queue.pk) == 2
    assert cluster_jobs_of(controller, queue) == [retried_job]
    assert sorted(cluster_jobs_of(controller, other)) == other_jobs


def test_a_stop_whose_tasks_are_lost_is_still_forced_by_reconcile(
    k8s_pipeline, settings  # noqa: F811 (fixture)
):
    """Stop, nothing lost: the request's tasks never run (worker killed, broker lost them); after the grace a
    reconcile pass removes every Job, and the next pass ends the steps stopped."""
    controller = k8s_pipeline
    settings.STOP_GRACE_SECONDS = 30
    queue = _running_queue("fan-lost", 4, controller)
    queue_stop(queue=queue, reason="test")  # outside a transaction: announced at once, and never run here
    scheduler.reconcile()
    assert len(cluster_jobs_of(controller, queue)) == 4  # within the grace: left alone
    _past_grace(queue)
    scheduler.reconcile()
    assert cluster_jobs_of(controller, queue) == []
    wait_until(lambda: controller.pods(label_selector=f"streamforge.io/queue-id={queue.queue_id}") == [],
               message="the pods of the deleted Jobs are gone")
    scheduler.reconcile()
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}


WORKER_START = """
import sys
import django
django.setup()
import jobs.tasks  # what the worker's main process imports (its tasks) before the pool forks
from celery.signals import worker_init
before = "kubernetes" in sys.modules
worker_init.send(sender=None)
print(before, "kubernetes" in sys.modules)
"""


def test_the_worker_imports_the_kubernetes_client_before_its_children_fork():
    """Stop, the worker: the `kubernetes` client (~2 s to import) is imported by the worker's main process at
    `worker_init`, so a freshly forked child's first forced stop is not that late (the bench saw its first
    command task take 2.8 s, 2.6 s of it importing the client)."""
    db = connection.settings_dict
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "queuemanager.settings", "JOB_LAUNCHER": "kubernetes", "DEBUG": "1",
           "DATABASE_URL": f"postgresql://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    done = subprocess.run([sys.executable, "-c", WORKER_START], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
