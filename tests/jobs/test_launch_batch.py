"""Issue #12 launch figures: a queue's steps ready together launch together (jobs.launching).

An advance that finds several steps ready sends ONE `steps_launch` task: their claims in one statement,
their API calls at once, their records in one statement (with the mirror's outbox rows). Pinned here by
counting (statements captured, API requests the emulator received, tasks sent), never by timing: the
same Jobs and Secrets as one launch each, no lost and no double launch under two workers, and a failed
step retried or failed exactly as `step_launch` does it while the others launch.
"""
from __future__ import annotations

import json
import threading
import time

import kubernetes
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import advance, launching, scheduler
from jobs.launchers import LaunchError
from mirror.models import MirrorOutbox
from queues.models import QueueRequest, StepState
from tests.jobs.helpers import on_task, state_changes
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db(transaction=True)

TYPES = [f"api_candles_{i}" for i in ("1m", "5m", "15m", "1h", "4h")] + ["api_trades"]


def _ready_queue(queue_id: str, n: int = 6):
    """A queue of n independent steps, advanced: all launching (the tasks the advance sent are swallowed)."""
    queue = make_queue(queue_id=queue_id, requests=[{"target": "loader-producer", "type": t} for t in TYPES[:n]])
    advance.queue_advance(queue.pk)
    pks = list(queue.steps.filter(state=StepState.LAUNCHING).order_by("pk").values_list("pk", flat=True))
    assert len(pks) == n
    return queue, pks


class _Fake:
    """Counts launches; raises the error given for a step's name."""

    name = "fake"

    def __init__(self, errors=None):
        self.launched: list[str] = []
        self.errors = errors or {}

    def launch(self, step_):
        if step_.name in self.errors:
            raise self.errors[step_.name]
        self.launched.append(step_.job_name)
        return {"launcher": self.name, "job_name": step_.job_name}

    def logs(self, step_, *, tail_bytes):
        return ""


@pytest.fixture
def swallowed(monkeypatch):
    """The tasks the advance and the launches send, recorded instead of sent: {task name: [args]}."""
    sent: dict[str, list] = {}
    for task in ("step_launch_task", "steps_launch_task", "queue_advance_task", "step_discard_task"):
        on_task(monkeypatch, task, lambda *args, _task=task: sent.setdefault(_task, []).append(args))
    return sent


@pytest.fixture
def received():
    with state_changes() as got:
        yield got


def test_an_advance_sends_one_launch_task_for_the_steps_ready_together(swallowed):
    """Case: an advance that finds 6 steps ready sends ONE steps_launch task with them (was 6 step_launch
    tasks); one ready step still gets its own step_launch."""
    queue, pks = _ready_queue("batch-advance")
    assert swallowed.get("steps_launch_task") == [(queue.pk, pks)]
    assert "step_launch_task" not in swallowed

    single, [pk] = _ready_queue("batch-advance-1", 1)
    assert swallowed["step_launch_task"] == [(pk,)]
    assert swallowed["steps_launch_task"] == [(queue.pk, pks)]


def test_a_batch_of_six_is_two_statements_with_every_outbox_row(swallowed, received, monkeypatch, settings):
    """Case: PostgreSQL round trips per launch ~2/N — the claims in one statement, the records (and each
    step's mirror outbox row, written by the same statement) in one; each step changed once, as alone."""
    settings.ARANGO_ENABLED = True
    monkeypatch.setattr("mirror.tasks.enqueue_drain", lambda: None)
    fake = _Fake()
    monkeypatch.setattr(scheduler, "get_launcher", lambda: fake)
    queue, pks = _ready_queue("batch-six")
    MirrorOutbox.objects.all().delete()
    received.clear()

    with CaptureQueriesContext(connection) as queries:
        outcome = launching.steps_launch(pks)

    assert outcome == {pk: "launched" for pk in pks}
    assert len(queries.captured_queries) == 2, [q["sql"] for q in queries.captured_queries]
    steps = {s.pk: s for s in QueueRequest.objects.filter(pk__in=pks).select_related("queue")}
    assert {s.state for s in steps.values()} == {StepState.PENDING}
    assert all(s.launcher_handle == {"launcher": "fake", "job_name": s.job_name} for s in steps.values())
    assert all(s.launched_at is not None and s.next_launch_at is None and s.launch_attempts == 1
               for s in steps.values())
    assert sorted(fake.launched) == sorted(s.job_name for s in steps.values())
    assert sorted(MirrorOutbox.objects.filter(kind="step").values_list("object_id", "doc_key")) == sorted(
        (s.pk, f"{queue.queue_id}__{s.name}") for s in steps.values())
    assert sorted(received) == sorted((pk, StepState.LAUNCHING, StepState.PENDING) for pk in pks)


def test_a_record_that_finds_a_step_moved_on_records_only_the_others(swallowed, received, monkeypatch, settings):
    """Case: the batch record is compare-and-set per step — a step stopped while its Job was created gets
    no pending state and no outbox row; its workload is removed as `step_launch` removes it."""
    settings.ARANGO_ENABLED = True
    monkeypatch.setattr("mirror.tasks.enqueue_drain", lambda: None)
    queue, pks = _ready_queue("batch-moved", 3)
    moved = pks[1]

    class Racing(_Fake):
        def launch(self, step_):
            if step_.pk == moved:  # a stop ends it while its launch is in flight
                QueueRequest.objects.filter(pk=moved).update(state=StepState.STOPPED)
            return super().launch(step_)

    discarded = []
    fake = Racing()
    fake.discard = lambda step_: discarded.append(step_.job_name)
    monkeypatch.setattr(scheduler, "get_launcher", lambda: fake)
    MirrorOutbox.objects.all().delete()
    received.clear()

    outcome = launching.steps_launch(pks)

    assert outcome == {pks[0]: "launched", moved: "discarded", pks[2]: "launched"}
    assert QueueRequest.objects.get(pk=moved).state == StepState.STOPPED
    assert discarded == [QueueRequest.objects.get(pk=moved).job_name]
    assert sorted(MirrorOutbox.objects.values_list("object_id", flat=True)) == [pks[0], pks[2]]
    assert sorted(received) == [(pks[0], StepState.LAUNCHING, StepState.PENDING),
                                (pks[2], StepState.LAUNCHING, StepState.PENDING)]


def test_a_failed_launch_in_a_batch_is_retried_or_failed_as_alone_and_the_others_launch(swallowed, monkeypatch,
                                                                                     settings):
    """Case: failure of one launch in a batch — the others are launched; a transient failure spends one
    attempt, says so, and its step's own step_launch task goes out after the backoff (as the task's retry
    would); a permanent one fails its step (and announces the advance), nothing else."""
    settings.LAUNCH_RETRY_BACKOFF_SECONDS = 7
    queue, pks = _ready_queue("batch-failure", 4)
    names = dict(QueueRequest.objects.filter(pk__in=pks).values_list("pk", "name"))
    transient, permanent = pks[1], pks[2]
    fake = _Fake({names[transient]: LaunchError("HTTP 503 busy"),
                  names[permanent]: LaunchError("HTTP 422 invalid", permanent=True)})
    monkeypatch.setattr(scheduler, "get_launcher", lambda: fake)
    etas = []
    monkeypatch.setattr("jobs.tasks.step_launch_task.apply_async",
                        lambda args=(), kwargs=None, **options: etas.append((tuple(args), options.get("eta"))))
    swallowed.clear()

    outcome = launching.steps_launch(pks)

    assert outcome == {pks[0]: "launched", transient: "retrying", permanent: "failed", pks[3]: "launched"}
    steps = {s.pk: s for s in QueueRequest.objects.filter(pk__in=pks)}
    assert steps[pks[0]].state == steps[pks[3]].state == StepState.PENDING
    retry = steps[transient]
    assert retry.state == StepState.LAUNCHING and retry.launch_attempts == 1
    assert retry.message == f"Launch attempt 1 of {settings.LAUNCH_MAX_ATTEMPTS} failed: HTTP 503 busy"
    [(args, eta)] = etas
    assert args == (transient,) and eta is not None and 6 <= (eta - retry.updated_at).total_seconds() <= 8
    assert retry.next_launch_at > eta  # reconcile resends only after the retry's own attempt could end
    assert steps[permanent].state == StepState.FAILED and "HTTP 422 invalid" in steps[permanent].message
    assert swallowed["queue_advance_task"] == [(queue.pk,)]


def test_a_batch_skips_what_is_not_launching_and_fails_what_is_out_of_attempts(swallowed, monkeypatch, settings):
    """Case: claims as alone — a step no longer launching is skipped, one whose run spent its attempts
    fails, and neither reaches the launcher."""
    settings.LAUNCH_MAX_ATTEMPTS = 3
    queue, pks = _ready_queue("batch-claims", 3)
    QueueRequest.objects.filter(pk=pks[0]).update(state=StepState.STOPPED)
    QueueRequest.objects.filter(pk=pks[1]).update(launch_attempts=3, message="HTTP 503")
    fake = _Fake()
    monkeypatch.setattr(scheduler, "get_launcher", lambda: fake)

    assert launching.steps_launch(pks) == {pks[0]: "skipped", pks[1]: "failed", pks[2]: "launched"}
    assert fake.launched == [QueueRequest.objects.get(pk=pks[2]).job_name]
    assert QueueRequest.objects.get(pk=pks[1]).state == StepState.FAILED


# --- against the Kubernetes emulator -----------------------------------------------------------------


def _posted(emulator, namespace) -> list[str]:
    """The kind (last path segment) of every POST the emulator received in the namespace."""
    return [path.split("/")[-1] for method, path, *_ in emulator.requests
            if method == "POST" and f"/namespaces/{namespace}/" in path]


def _cluster(kube) -> tuple[dict, dict]:
    """The namespace's Jobs and Secrets by name."""
    core, batch = kubernetes.client.CoreV1Api(kube.api_client), kubernetes.client.BatchV1Api(kube.api_client)
    jobs = json.loads(batch.list_namespaced_job(kube.namespace, _preload_content=False).data)["items"]
    secrets = json.loads(core.list_namespaced_secret(kube.namespace, _preload_content=False).data)["items"]
    return {j["metadata"]["name"]: j for j in jobs}, {s["metadata"]["name"]: s for s in secrets}


def test_a_batch_makes_each_steps_two_calls_its_secret_owned_by_its_job(launcher, kube, emulator, swallowed,
                                                                       monkeypatch):
    """Case: API calls per launch — still exactly a Job and its Secret per step (12 POSTs for 6 steps, made at
    once), each Secret owned by its own Job's uid from creation; every step pending with its Job's uid."""
    monkeypatch.setattr(scheduler, "get_launcher", lambda: launcher)
    queue, pks = _ready_queue("batch-k8s")
    emulator.requests.clear()

    assert launching.steps_launch(pks) == {pk: "launched" for pk in pks}

    assert sorted(_posted(emulator, kube.namespace)) == ["jobs"] * 6 + ["secrets"] * 6
    jobs, secrets = _cluster(kube)
    for step_ in QueueRequest.objects.filter(pk__in=pks):
        uid = jobs[step_.job_name]["metadata"]["uid"]
        assert step_.state == StepState.PENDING and step_.launcher_handle["uid"] == uid
        owners = secrets[f"{step_.job_name}-telemetry"]["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("Job", step_.job_name, uid)]


def test_two_workers_launching_the_same_steps_at_once_make_one_job_each(launcher, kube, swallowed, monkeypatch):
    """Case: no lost and no double launch under concurrency — two workers (each its own database
    connection) run the batch and the per-step launches of the same steps at once: each step has exactly
    one Job (the later create meets 409 and adopts it) and one Secret, every step pending with that Job's
    uid, at most two attempts counted per step (each claim is atomic)."""
    monkeypatch.setattr(scheduler, "get_launcher", lambda: launcher)
    queue, pks = _ready_queue("batch-race")
    barrier, outcomes, errors = threading.Barrier(2), [], []

    def worker(run):
        try:
            barrier.wait()
            outcomes.append(run())
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(lambda: launching.steps_launch(pks),)),
               threading.Thread(target=worker, args=(lambda: {pk: launching.step_launch(pk) for pk in pks},))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and len(outcomes) == 2
    # Whichever claims second either finds the step pending (skipped) or launches it again (409: adopted).
    assert all(set(outcome.values()) <= {"launched", "skipped"} for outcome in outcomes), outcomes
    assert all("launched" in {outcome[pk] for outcome in outcomes} for pk in pks), outcomes
    jobs, secrets = _cluster(kube)
    steps = list(QueueRequest.objects.filter(pk__in=pks))
    assert sorted(jobs) == sorted(s.job_name for s in steps)
    assert sorted(secrets) == sorted(f"{s.job_name}-telemetry" for s in steps)
    assert all(s.state == StepState.PENDING and s.launcher_handle["uid"] == jobs[s.job_name]["metadata"]["uid"]
               for s in steps)
    assert all(s.launch_attempts in (1, 2) for s in steps)


def test_batches_reuse_the_processs_launch_threads(launcher, historical_queue, monkeypatch, k8s_settings):
    """Case: Python per launch — the threads a batch launches on are made once per process and reused
    (starting a thread per launch cost more than its request on a loaded node); a forked child makes its
    own (the pool belongs to the process that made it)."""
    k8s_settings.K8S_LAUNCH_CONCURRENCY = 6
    steps = list(historical_queue.steps.select_related("queue").order_by("position"))
    assert len(steps) == 6
    together = threading.Barrier(len(steps), timeout=30)  # every launch of a batch in flight at once
    used: list[threading.Thread] = []

    def launch(step_):
        used.append(threading.current_thread())
        together.wait()
        return {"uid": step_.name}

    monkeypatch.setattr(launcher, "launch", launch)
    for _ in range(3):
        assert launcher.launch_many(steps) == [{"uid": s.name} for s in steps]

    assert len(used) == 18 and len(set(used)) == 6  # a pool per batch: 18 threads
    assert threading.current_thread() not in used
    pool = launcher._launch_pool()
    monkeypatch.setattr("os.getpid", lambda: -1)  # as in a forked child
    assert launcher._launch_pool() is not pool


def test_a_batch_launches_at_most_K8S_LAUNCH_CONCURRENCY_steps_at_once(launcher, historical_queue, monkeypatch,
                                                                       k8s_settings):
    """Case: launch concurrency is bounded by K8S_LAUNCH_CONCURRENCY — how many requests an API server
    serves at once is its own (and each launch thread costs the worker CPU), so how many a batch sends at
    once is a setting; every step is still launched."""
    k8s_settings.K8S_LAUNCH_CONCURRENCY = 2
    steps = list(historical_queue.steps.select_related("queue").order_by("position"))
    lock, flying, most = threading.Lock(), [0], [0]
    used: set[threading.Thread] = set()

    def launch(step_):
        with lock:
            flying[0] += 1
            most[0] = max(most[0], flying[0])
            used.add(threading.current_thread())
        time.sleep(0.05)  # long enough for every free thread to take a step meanwhile
        with lock:
            flying[0] -= 1
        return {"uid": step_.name}

    monkeypatch.setattr(launcher, "launch", launch)
    assert launcher.launch_many(steps) == [{"uid": s.name} for s in steps]
    assert most[0] == 2 and len(used) == 2
