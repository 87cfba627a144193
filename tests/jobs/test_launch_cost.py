"""Issue #12 "Launch": a launch costs two API calls and a fixed number of queries, and keeps its security.

Each test pins behaviour the faster launch must keep, by counting (API requests the emulator received,
queries captured), never by timing: the Job first, then its telemetry credential Secret owned by the Job
from creation (no patch); nothing left behind when the Secret cannot be created; a pod that waits for its
Secret is not a failed step; Flower's readable task arguments without a query per enqueued task.
"""
from __future__ import annotations

import json

import kubernetes
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import advance, launching, scheduler
from jobs.announce import STEP_LAUNCH
from jobs.launchers import LaunchError
from queues.models import QueueRequest, StepState
from tests.helpers import wait_until
from tests.jobs.helpers import on_task
from tests.jobs.test_kubernetes_pipeline import k8s_pipeline, step, tick  # noqa: F401
from tests.queues.factories import make_queue

TYPES = [f"api_candles_{i}" for i in ("1m", "5m", "15m", "1h", "4h")] + ["api_trades"]


def _first(queue) -> QueueRequest:
    return queue.steps.select_related("queue").order_by("position").first()


def _api_calls(emulator, namespace) -> list[tuple[str, str]]:
    prefix = (f"/apis/batch/v1/namespaces/{namespace}/", f"/api/v1/namespaces/{namespace}/")
    return [(method, path.split("/")[-1] if method == "POST" else path.split("/")[-2])
            for method, path, *_ in emulator.requests if path.startswith(prefix)]


def _secret(kube, step_) -> dict | None:
    raw = kubernetes.client.CoreV1Api(kube.api_client).list_namespaced_secret(kube.namespace, _preload_content=False)
    return next((s for s in json.loads(raw.data)["items"] if s["metadata"]["name"] == f"{step_.job_name}-telemetry"),
                None)


def _job(kube, name) -> dict | None:
    raw = kubernetes.client.BatchV1Api(kube.api_client).list_namespaced_job(kube.namespace, _preload_content=False)
    return next((j for j in json.loads(raw.data)["items"] if j["metadata"]["name"] == name), None)


# --- API calls per launch ------------------------------------------------------------------------


def test_a_launch_is_two_api_calls_the_job_then_its_secret_owned_from_creation(launcher, historical_queue, kube,
                                                                            emulator):
    """Case: two API calls per launch (was three: Secret, Job, PATCH of the Secret's owner); the Secret
    names the Job's uid as owner in its create, so it is never without one."""
    step_ = _first(historical_queue)
    emulator.requests.clear()

    handle = launcher.launch(step_)

    assert _api_calls(emulator, kube.namespace) == [("POST", "jobs"), ("POST", "secrets")]
    secret = _secret(kube, step_)
    owners = secret["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("Job", step_.job_name, handle["uid"])]
    assert "blockOwnerDeletion" not in owners[0]  # needs more than the Role grants; the GC does not need it


def test_a_repeated_launch_adopts_the_job_and_reowns_its_secret(launcher, historical_queue, kube, emulator):
    """Case: idempotent launch — the second attempt meets two 409s, keeps one Job and one Secret owned by it
    (the rare path may cost a patch: the Secret could predate this Job)."""
    step_ = _first(historical_queue)
    first = launcher.launch(step_)
    emulator.requests.clear()

    again = launcher.launch(step_)

    assert again["uid"] == first["uid"] and again["created"] is False
    calls = _api_calls(emulator, kube.namespace)
    assert calls[0] == ("POST", "jobs") and ("POST", "secrets") in calls and ("PATCH", "secrets") in calls
    owners = _secret(kube, step_)["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [first["uid"]]


# --- failure between the two calls ---------------------------------------------------------------


def test_a_secret_refused_for_good_deletes_the_job_it_was_for(launcher, historical_queue, kube, emulator):
    """Case: no leak on partial failure — Job created, Secret refused (422): the launch fails for good
    and removes the Job, whose pod could never start."""
    step_ = _first(historical_queue)
    emulator.fail_next("POST", r"/secrets$", 422)

    with pytest.raises(LaunchError) as caught:
        launcher.launch(step_)

    assert caught.value.permanent
    assert [call for call in _api_calls(emulator, kube.namespace) if call[0] == "POST"] == [
        ("POST", "jobs"), ("POST", "secrets")]
    wait_until(lambda: _job(kube, step_.job_name) is None, message="the Job of the failed launch is deleted")
    assert _secret(kube, step_) is None


def test_a_secret_that_failed_for_now_is_created_by_the_retry_for_the_same_job(launcher, historical_queue, kube,
                                                                           emulator):
    """Case: no leak and no duplicate on a transient failure — the Job stays for the retry, which adopts
    it (409) and creates the Secret owned by it."""
    step_ = _first(historical_queue)
    emulator.fail_next("POST", r"/secrets$", 503, times=launcher.attempts)

    with pytest.raises(LaunchError) as caught:
        launcher.launch(step_)
    assert not caught.value.permanent
    job = _job(kube, step_.job_name)
    assert job is not None and _secret(kube, step_) is None

    handle = launcher.launch(step_)

    assert handle["uid"] == job["metadata"]["uid"]
    assert [o["uid"] for o in _secret(kube, step_)["metadata"]["ownerReferences"]] == [handle["uid"]]


def test_a_launch_out_of_attempts_between_job_and_secret_leaves_nothing(k8s_pipeline, historical_queue, kube,
                                                                        emulator, settings, monkeypatch):
    """Case: no leak when the budget runs out between the two calls — the step fails, and its discard
    removes the Job (and a Secret, had one been made)."""
    settings.LAUNCH_MAX_ATTEMPTS = 1
    settings.LAUNCH_RETRY_BACKOFF_SECONDS = 0.01
    on_task(monkeypatch, "step_discard_task", lambda pk, job_name: scheduler.step_discard(pk, job_name=job_name))
    on_task(monkeypatch, "queue_advance_task", lambda pk: None)
    advance.queue_advance(historical_queue.pk)
    step = historical_queue.steps.filter(state=StepState.LAUNCHING).order_by("position").first()
    emulator.fail_next("POST", r"/secrets$", 503, times=10)

    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        assert launching.step_launch(step.pk) == "failed"

    step.refresh_from_db()
    assert step.state == StepState.FAILED
    wait_until(lambda: _job(kube, step.job_name) is None, message="the failed step's Job is discarded")
    assert _secret(kube, step) is None


# --- a pod waiting for its Secret --------------------------------------------------------------


def test_the_emulated_kubelet_holds_a_pod_until_its_secret_exists(launcher, historical_queue, kube, controller):
    """Case: the emulator is strict — a container whose non-optional secretKeyRef is missing waits in
    CreateContainerConfigError (the pod Pending), and starts once the Secret is created."""
    from jobs.manifests import job_manifest

    step_ = _first(historical_queue)
    batch = kubernetes.client.BatchV1Api(kube.api_client)
    batch.create_namespaced_job(kube.namespace, job_manifest(step_))  # the Job alone: its Secret is missing

    controller.mark_running(step_.job_name)

    [pod] = controller.pods(step_.job_name)
    assert pod["status"]["phase"] == "Pending"
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "CreateContainerConfigError",
                       "message": f'Error: secret "{step_.job_name}-telemetry" not found'}
    assert controller.job(step_.job_name)["status"].get("ready") == 0

    kubernetes.client.CoreV1Api(kube.api_client).create_namespaced_secret(
        kube.namespace, {"metadata": {"name": f"{step_.job_name}-telemetry"}, "stringData": {"token": "t"}})

    wait_until(lambda: [p["status"]["phase"] for p in controller.pods(step_.job_name)] == ["Running"],
               message="the kubelet starts the container once its Secret exists")


def test_the_emulated_garbage_collector_removes_a_secret_created_for_a_job_already_gone(launcher, historical_queue,
                                                                                         kube, emulator):
    """Case: no leak when the Job is deleted between the two calls — a Secret whose owner is absent at its
    creation is collected, as a real garbage collector does."""
    from jobs.launchers.kubernetes import credential_secret

    step_ = _first(historical_queue)
    gone = {"metadata": {"name": step_.job_name, "uid": "0b6d1d4e-0000-4000-8000-000000000000"}}
    kubernetes.client.CoreV1Api(kube.api_client).create_namespaced_secret(
        kube.namespace, credential_secret(step_, gone, namespace=kube.namespace))

    wait_until(lambda: _secret(kube, step_) is None, message="the Secret of an absent owner is collected")


def test_a_pending_step_whose_pod_waits_for_its_secret_is_not_failed(k8s_pipeline, historical_queue, kube):
    """Case: reconcile treats CreateContainerConfigError while the Secret is being created as pending — the
    step neither fails nor counts as running; it runs once the kubelet starts the container."""
    controller, queue = k8s_pipeline, historical_queue
    advance.queue_advance(queue.pk)
    connector = queue.steps.filter(state=StepState.LAUNCHING).select_related("queue").order_by("position").first()
    message = f'Error: secret "{connector.job_name}-telemetry" not found'
    original = scheduler.get_launcher().launch

    def kubelet_first(step_):
        # The kubelet tries the pod between the two calls; the launch then records the step pending.
        handle = original(step_)
        controller.create_pod_for(step_.job_name, "Pending", "CreateContainerConfigError", message=message)
        return handle

    launcher = scheduler.get_launcher()
    launcher.launch = kubelet_first
    try:
        assert launching.step_launch(connector.pk) == "launched"
    finally:
        del launcher.launch

    tick(queue)
    connector.refresh_from_db()
    assert connector.state == StepState.PENDING
    assert "CreateContainerConfigError" in connector.message

    controller.mark_running(connector.job_name)
    tick(queue)
    connector.refresh_from_db()
    assert connector.state == StepState.RUNNING


# --- queries per launch and per advance ----------------------------------------------------------


def _independent_queue(queue_id: str, n: int):
    return make_queue(queue_id=queue_id, requests=[{"target": "loader-producer", "type": t} for t in TYPES[:n]],
                      first_advance=False)


@pytest.mark.django_db(transaction=True)
def test_an_advance_sends_every_launch_without_a_query_per_step(monkeypatch):
    """Case: queries per launch independent of the queue — an advance that starts 6 steps costs what one
    that starts 1 step does: their state changes are one UPDATE (was one per step; before that four: a
    savepoint around it, and the query per enqueued task for Flower's readable arguments, which come from
    the objects in hand); the 6 go out in one steps_launch task (jobs.launching), the single one in its
    step_launch."""
    sent: list[tuple] = []
    for task in ("step_launch_task", "steps_launch_task"):
        monkeypatch.setattr(f"jobs.tasks.{task}.apply_async", lambda args=(), kwargs=None, _task=task, **options:
                            sent.append((_task, tuple(args), options.get("argsrepr"))))
    counts = {}
    for n in (1, 6):
        queue = _independent_queue(f"launch-cost-{n}", n)
        with CaptureQueriesContext(connection) as queries:
            launched = advance.queue_advance(queue.pk)
        assert len(launched) == n
        counts[n] = len(queries.captured_queries)

    assert counts[6] == counts[1], counts
    one = QueueRequest.objects.get(queue__queue_id="launch-cost-1")
    six = QueueRequest.objects.filter(queue__queue_id="launch-cost-6").order_by("pk")
    assert sent == [("step_launch_task", (one.pk,), f"(queue=launch-cost-1, step={one.name})"),
                    ("steps_launch_task", (six[0].queue_id, [s.pk for s in six]), "(queue=launch-cost-6)")]


@pytest.mark.django_db
def test_a_launch_costs_the_same_queries_whatever_the_queue_size(settings, monkeypatch):
    """Case: queries per launch independent of the queue's size and of the history (claim + record)."""

    class Fake:
        name = "fake"

        def launch(self, step_):
            return {"launcher": self.name, "job_name": step_.job_name}

    monkeypatch.setattr(scheduler, "get_launcher", lambda: Fake())
    on_task(monkeypatch, STEP_LAUNCH.rsplit(".", 1)[-1], lambda *args: None)
    settings.ARANGO_ENABLED = False
    counts = {}
    for n in (1, 6):
        queue = _independent_queue(f"launch-size-{n}", n)
        advance.queue_advance(queue.pk)
        pks = list(queue.steps.filter(state=StepState.LAUNCHING).values_list("pk", flat=True))
        with CaptureQueriesContext(connection) as queries:
            assert [launching.step_launch(pk) for pk in pks] == ["launched"] * n
        counts[n] = len(queries.captured_queries) / n

    assert counts[1] == counts[6] == 2, counts  # the claim (UPDATE … RETURNING) and the record (UPDATE)


def test_a_launch_hands_its_connections_back_to_the_pool(launcher, historical_queue, emulator):
    """Case: API calls per launch — each reuses the client's kept-alive connection (an unread response
    kept its connection out of the pool, so every launch opened a new one: a TLS handshake per launch)."""
    pool_manager = launcher.api_client.rest_client.pool_manager
    steps = list(historical_queue.steps.select_related("queue").order_by("position"))[:4]

    def opened() -> int:
        return sum(pool_manager.pools[key].num_connections for key in pool_manager.pools.keys())

    launcher.launch(steps[0])
    before = opened()
    for step_ in steps[1:]:
        launcher.launch(step_)
    launcher.delete_job(steps[1].job_name)

    assert opened() == before


# --- Python per launch -----------------------------------------------------------------------------


def test_a_launch_posts_its_bodies_as_built_without_the_clients_model_walk(kube, k8s_settings, historical_queue,
                                                                          monkeypatch):
    """Case: Python per launch (issue #12 launch_sustained) — through the client the launcher is built with
    (k8s_client), the Job and Secret bodies go out exactly as `job_manifest` and `credential_secret` build
    them, and the client's per-field model walk (`sanitize_for_serialization`, ~2.5x the cost of the JSON
    encoding of a manifest) never runs over them; auth and headers stay the client's own."""
    from jobs import k8s_client
    from jobs.launchers.kubernetes import KubernetesLauncher, credential_secret
    from jobs.manifests import job_manifest

    client = k8s_client.ApiClient(kube.manager_client.configuration)
    launcher = KubernetesLauncher(client, namespace=kube.namespace)
    walked, sent = [], []
    walk = kubernetes.client.ApiClient.sanitize_for_serialization
    monkeypatch.setattr(kubernetes.client.ApiClient, "sanitize_for_serialization",
                        lambda self, obj: (walked.append(obj), walk(self, obj))[1])
    request = client.request
    monkeypatch.setattr(client, "request", lambda method, url, **kw: (sent.append((method, url, kw.get("body"))),
                                                                      request(method, url, **kw))[1])
    step_ = _first(historical_queue)

    handle = launcher.launch(step_)

    assert [(method, url.rsplit("/", 1)[-1]) for method, url, _ in sent] == [("POST", "jobs"), ("POST", "secrets")]
    job = {"metadata": {"name": step_.job_name, "uid": handle["uid"]}}
    assert sent[0][2] == job_manifest(step_)
    assert sent[1][2] == credential_secret(step_, job, namespace=kube.namespace)
    assert not [obj for obj in walked if isinstance(obj, dict) and "apiVersion" in obj and "metadata" in obj]
    assert _secret(kube, step_)["metadata"]["ownerReferences"][0]["uid"] == handle["uid"]


# --- round trips on the way from create to the first Jobs ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_advance_refreshes_the_queue_status_in_its_own_transaction_without_a_savepoint(monkeypatch):
    """Case: create → ready round trips (issue #12 launch_create_to_ready_jobs) — the advance that starts a
    new queue's ready steps refreshes the queue's status inside its own transaction without a savepoint
    (SAVEPOINT and RELEASE were two of its 13 round trips), and reads the step states without joining the
    queue table for an ordering the status rule does not need. The status written stays the rule's."""
    monkeypatch.setattr("jobs.tasks.step_launch_task.apply_async", lambda *args, **kwargs: None)
    queue = _independent_queue("refresh-no-savepoint", 2)

    with CaptureQueriesContext(connection) as queries:
        assert len(advance.queue_advance(queue.pk)) == 2

    statements = [q["sql"] for q in queries.captured_queries]
    assert not [sql for sql in statements if "SAVEPOINT" in sql], statements
    states = [sql for sql in statements if sql.startswith('SELECT "queues_queuerequest"."state"')]
    # None at all since the advance hands the refresh the states it holds (tests/jobs/test_advance_round_trips.py);
    # the refresh's own read (stop, retry) has no join either.
    assert len(states) <= 1 and all("JOIN" not in sql for sql in states), states
    queue.refresh_from_db()
    assert queue.status == "running" and queue.started_at is not None
