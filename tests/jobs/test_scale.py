"""Issue #12 "Production scale": launch and reconcile cost what a change costs, not what the history costs.

Each test pins the behaviour the faster paths must keep (exact states, no missed advance, no lost
launch) together with the bound on the work: queries per launch, queues advanced per pass, pod
lookups per snapshot. Counts, never timings.
"""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import advance, k8s_reconcile, launching, scheduler
from jobs.launchers import Observation, Phase
from queues.models import Queue, QueueRequest, StepState
from tests.queues.factories import make_queue
from tests.jobs.helpers import on_task

pytestmark = pytest.mark.django_db

CONN_C = ("arango-connector", "api_candles_5m")
CONN_T = ("arango-connector", "api_trades")
LOADER_C = ("loader-producer", "api_candles_5m")


def _s(queue, key) -> QueueRequest:
    return queue.steps.get(target=key[0], type=key[1])


class Launcher:
    """Observes every workload running; records launches."""

    name = "fake"

    def __init__(self):
        self.launched: list[str] = []

    def launch(self, step):
        self.launched.append(step.job_name)
        return {"launcher": self.name, "job_name": step.job_name}

    def status(self, step):
        return Observation(Phase.RUNNING)

    def stop(self, step, *, force):
        pass

    def logs(self, step, *, tail_bytes):
        return ""


@pytest.fixture
def launcher(monkeypatch):
    fake = Launcher()
    monkeypatch.setattr(scheduler, "get_launcher", lambda: fake)
    for task in ("step_launch_task", "step_send_stop_task", "queue_advance_task", "step_discard_task"):
        on_task(monkeypatch, task, lambda *args: None)
    return fake


@pytest.fixture
def advanced(monkeypatch):
    calls: list[int] = []
    original = scheduler.queue_advance

    def spy(pk):
        calls.append(pk)
        return original(pk)

    monkeypatch.setattr(scheduler, "queue_advance", spy)
    return calls


def _idle_running_queue(n: int) -> Queue:
    """An active queue whose connectors run and whose loaders wait: nothing to do until a change."""
    queue = make_queue(queue_id=f"scale-idle-{n}")
    scheduler.queue_advance(queue.pk)  # connectors → launching
    now = timezone.now()
    QueueRequest.objects.filter(queue=queue, state=StepState.LAUNCHING).update(
        state=StepState.RUNNING, launched_at=now, started_at=now)
    # One more advance acts on everything so far (what the task after those transitions does).
    Queue.objects.filter(pk=queue.pk).update(changes_pending=1)
    scheduler.queue_advance(queue.pk)
    return queue


def test_a_pass_advances_no_queue_when_nothing_changed(launcher, advanced):
    """Reconcile: work per pass follows what changed, not the number of active queues."""
    queues = [_idle_running_queue(n) for n in range(4)]
    assert all(q.status == "running" for q in Queue.objects.filter(pk__in=[q.pk for q in queues]))
    assert not Queue.objects.needing_advance().filter(pk__in=[q.pk for q in queues]).exists()

    advanced.clear()
    summary = scheduler.reconcile()

    assert summary["observed"] == 8 and summary["changed"] == 0
    assert advanced == []


def test_a_change_whose_advance_was_lost_is_advanced_by_the_next_pass(launcher, advanced):
    """Reconcile: no missed change — a transition made outside the pass (telemetry's advance task lost)."""
    from jobs.services import step_transition

    queue = _idle_running_queue(0)
    other = _idle_running_queue(1)
    loader = _s(queue, LOADER_C)
    # The loader launched and its worker reported `finished`; the advance announced for it never ran.
    QueueRequest.objects.filter(pk=loader.pk).update(state=StepState.RUNNING, launched_at=timezone.now())
    loader.refresh_from_db()
    assert step_transition(loader, StepState.SUCCEEDED, from_states=[StepState.RUNNING], message="")

    advanced.clear()
    scheduler.reconcile()

    assert advanced == [queue.pk]  # only the queue that changed
    assert other.pk not in advanced
    assert not Queue.objects.needing_advance().filter(pk=queue.pk).exists()


def test_a_change_counted_during_an_advance_stays_for_the_next_pass(launcher, advanced, monkeypatch):
    """Reconcile: a change made while an advance runs is not cleared by it (the next pass sees it)."""
    queue = _idle_running_queue(0)
    original = advance._drain_consumers

    def change_meanwhile(steps):
        # Another actor's transition is counted after this advance read the queue's changes.
        Queue.objects.filter(pk=queue.pk).update(changes_pending=F("changes_pending") + 1)
        original(steps)

    from django.db.models import F

    Queue.objects.filter(pk=queue.pk).update(changes_pending=2)
    monkeypatch.setattr(advance, "_drain_consumers", change_meanwhile)
    scheduler.queue_advance(queue.pk)

    assert Queue.objects.get(pk=queue.pk).changes_pending == 1


def test_a_pass_still_drains_a_caught_up_consumer_without_any_change(launcher, advanced):
    """Reconcile: time- and progress-driven work (DESIGN §5 rule 4) is found without a state change."""
    queue = _idle_running_queue(0)
    loader = _s(queue, LOADER_C)
    QueueRequest.objects.filter(pk=loader.pk).update(state=StepState.SUCCEEDED, records_written=40,
                                                     finished_at=timezone.now())
    QueueRequest.objects.filter(pk=_s(queue, CONN_C).pk).update(records_written=40)  # telemetry: caught up
    Queue.objects.filter(pk=queue.pk).update(changes_pending=0)

    advanced.clear()
    scheduler.reconcile()

    assert advanced == [queue.pk]
    connector = _s(queue, CONN_C)
    assert connector.state == StepState.STOPPING and connector.drain_requested_at is not None


def test_a_launch_is_a_claim_and_one_record_update(launcher, settings):
    """Launch: a bounded, small number of queries, the step ending exactly as before (pending, handle, one attempt)."""
    settings.ARANGO_ENABLED = False  # the mirror outbox row is the mirror's, not the launch's
    queue = make_queue(queue_id="scale-launch")
    scheduler.queue_advance(queue.pk)
    step = _s(queue, CONN_C)

    with CaptureQueriesContext(connection) as queries:
        assert launching.step_launch(step.pk) == "launched"

    writes = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(writes) == 2, writes  # the claim (UPDATE … RETURNING) and the record (UPDATE)
    step.refresh_from_db()
    assert step.state == StepState.PENDING and step.launch_attempts == 1 and step.next_launch_at is None
    assert step.launcher_handle == {"launcher": "fake", "job_name": step.job_name} and step.launched_at
    assert launcher.launched == [step.job_name]
    queue.refresh_from_db()
    assert queue.status == "running"


def test_a_snapshot_finds_each_jobs_pods_without_scanning_every_pod(monkeypatch):
    """Reconcile: pods are indexed by their Job once per snapshot (was Jobs × pods label reads)."""
    jobs = {f"job-{i}": {"metadata": {"name": f"job-{i}"}} for i in range(50)}
    pods = [{"metadata": {"name": f"job-{i}-{k}", "labels": {"job-name": f"job-{i}"}}} for i in range(50) for k in range(2)]
    reads = []
    original = k8s_reconcile.pod_job_name
    monkeypatch.setattr(k8s_reconcile, "pod_job_name", lambda pod: reads.append(1) or original(pod))
    snapshot = k8s_reconcile.Snapshot(jobs=jobs, pods=pods)

    found = {name: [p["metadata"]["name"] for p in snapshot.pods_of(name)] for name in jobs}

    assert found["job-7"] == ["job-7-0", "job-7-1"] and all(len(v) == 2 for v in found.values())
    assert snapshot.pods_of("no-such-job") == []
    assert len(reads) == len(pods)


class SnapshotLauncher(Launcher):
    """Observes all steps from one snapshot (as the Kubernetes launcher does); `done` have succeeded."""

    def __init__(self):
        super().__init__()
        self.done: set[str] = set()

    def observe_many(self, steps):
        return {s.pk: Observation(Phase.SUCCEEDED if s.job_name in self.done else Phase.RUNNING) for s in steps}


def test_a_snapshot_pass_reads_steps_light_and_whole_rows_only_for_those_it_acts_on(monkeypatch, advanced):
    """Reconcile at 10,000 Jobs: building every launched step with its queue was most of a pass; the
    steady state needs a few columns, and only steps whose workload changed are read whole."""
    fake = SnapshotLauncher()
    monkeypatch.setattr(scheduler, "get_launcher", lambda: fake)
    for task in ("step_launch_task", "step_send_stop_task", "queue_advance_task", "step_discard_task"):
        on_task(monkeypatch, task, lambda *args: None)
    small = [_idle_running_queue(n) for n in range(2)]

    def one_pass():
        with CaptureQueriesContext(connection) as queries:
            summary = scheduler.reconcile()
        return summary, [q["sql"] for q in queries.captured_queries]

    idle_small, sql_small = one_pass()
    for n in range(2, 6):
        _idle_running_queue(n)
    idle_large, sql_large = one_pass()
    assert (idle_small["observed"], idle_large["observed"]) == (4, 12)
    assert idle_small["changed"] == idle_large["changed"] == 0
    assert len(sql_large) == len(sql_small)
    step_reads = [sql for sql in sql_large if sql.startswith('SELECT') and "IN ('launching'" in sql]
    assert step_reads and all('"queues_queue"' not in sql and '"params"' not in sql for sql in step_reads), step_reads

    ended = _s(small[0], CONN_C)
    fake.done.add(ended.job_name)
    summary, _ = one_pass()
    ended.refresh_from_db()
    assert summary["changed"] == 1 and ended.state == StepState.SUCCEEDED
    assert QueueRequest.objects.filter(state=StepState.RUNNING).count() == 11
