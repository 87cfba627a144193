"""The scheduler (jobs.scheduler): launch order, drain, failure policy, stop, and reconcile.

DB-level tests on the historical payload. Nothing reaches Celery: on_commit callbacks do not fire
inside the `db` fixture (captured where what was enqueued matters), and the launcher is a fake.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import launching, scheduler
from jobs.launchers import LaunchError, Observation, Phase
from queues.models import DependencyKind, Queue, QueueRequest, QueueStatus, StepState
from tests.queues.factories import make_queue
from tests.jobs.helpers import on_task

pytestmark = pytest.mark.django_db

LOADER_C = ("loader-producer", "api_candles_5m")
LOADER_T = ("loader-producer", "api_trades")
CONN_C = ("arango-connector", "api_candles_5m")
CONN_T = ("arango-connector", "api_trades")
GRAPH = ("graph-builder", "gnn_graph")
TRAIN = ("gnn-trainer", "gnn_train")
ALL = [LOADER_C, LOADER_T, CONN_C, CONN_T, GRAPH, TRAIN]


@pytest.fixture
def queue():
    return make_queue(queue_id="sched-q", first_advance=False)  # what the advance acts on


def _s(queue, key) -> QueueRequest:
    return queue.steps.get(target=key[0], type=key[1])


def _put(queue, key, state: str, **fields) -> QueueRequest:
    step = _s(queue, key)
    QueueRequest.objects.filter(pk=step.pk).update(state=state, **fields)
    step.refresh_from_db()
    return step


def _states(queue) -> dict:
    return {key: _s(queue, key).state for key in ALL}


def _ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


# --- launch order -------------------------------------------------------------------------------


def test_it_launches_only_the_connectors_first(queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        launched = scheduler.queue_advance(queue.pk)
    assert sorted(launched) == sorted([_s(queue, CONN_C).pk, _s(queue, CONN_T).pk])
    states = _states(queue)
    assert states[CONN_C] == states[CONN_T] == StepState.LAUNCHING
    assert {states[k] for k in (LOADER_C, LOADER_T, GRAPH, TRAIN)} == {StepState.WAITING}
    assert len(callbacks) == 1  # one steps_launch for the two steps ready together, sent on commit
    queue.refresh_from_db()
    assert queue.status == QueueStatus.RUNNING and queue.started_at is not None


def test_it_launches_nothing_twice(queue):
    first = scheduler.queue_advance(queue.pk)
    assert len(first) == 2
    assert scheduler.queue_advance(queue.pk) == []


def test_it_uses_ready_and_success_edges_as_the_design_says(queue):
    edges = {(e.upstream.target, e.upstream.type, e.downstream.target, e.downstream.type): e.kind
             for e in queue.edges.select_related("upstream", "downstream")}  # fmt: skip
    assert edges[(*CONN_C, *LOADER_C)] == DependencyKind.READY
    assert edges[(*CONN_T, *LOADER_T)] == DependencyKind.READY
    assert edges[(*CONN_C, *GRAPH)] == DependencyKind.SUCCESS
    assert edges[(*CONN_T, *GRAPH)] == DependencyKind.SUCCESS
    assert edges[(*GRAPH, *TRAIN)] == DependencyKind.SUCCESS


@pytest.mark.parametrize("not_yet", [StepState.LAUNCHING, StepState.PENDING])
def test_it_launches_a_loader_only_once_its_connector_runs(queue, not_yet):
    _put(queue, CONN_C, not_yet)
    _put(queue, CONN_T, not_yet)
    assert scheduler.queue_advance(queue.pk) == []
    _put(queue, CONN_C, StepState.RUNNING, started_at=timezone.now())
    launched = scheduler.queue_advance(queue.pk)
    assert launched == [_s(queue, LOADER_C).pk]
    assert _s(queue, LOADER_T).state == StepState.WAITING


def test_it_launches_the_graph_builder_only_after_both_connectors_succeeded(queue):
    for key in (CONN_C, CONN_T, LOADER_C, LOADER_T):
        _put(queue, key, StepState.RUNNING, started_at=timezone.now())
    _put(queue, CONN_C, StepState.SUCCEEDED)
    assert _s(queue, GRAPH).pk not in scheduler.queue_advance(queue.pk)
    assert _s(queue, GRAPH).state == StepState.WAITING
    _put(queue, CONN_T, StepState.SUCCEEDED)
    assert scheduler.queue_advance(queue.pk) == [_s(queue, GRAPH).pk]
    assert _s(queue, TRAIN).state == StepState.WAITING
    _put(queue, GRAPH, StepState.SUCCEEDED)
    assert scheduler.queue_advance(queue.pk) == [_s(queue, TRAIN).pk]


# --- drain --------------------------------------------------------------------------------------


def _loaders_done_connectors_running(queue, *, loaded=(100, 50), written=(0, 0), at=None):
    at = at or timezone.now()
    _put(queue, LOADER_C, StepState.SUCCEEDED, records_written=loaded[0], finished_at=at, started_at=at)
    _put(queue, LOADER_T, StepState.SUCCEEDED, records_written=loaded[1], finished_at=at, started_at=at)
    _put(queue, CONN_C, StepState.RUNNING, records_written=written[0], started_at=at, last_progress_at=at)
    _put(queue, CONN_T, StepState.RUNNING, records_written=written[1], started_at=at, last_progress_at=at)


def test_it_drains_a_connector_that_caught_up_with_its_loader(queue, django_capture_on_commit_callbacks):
    _loaders_done_connectors_running(queue, loaded=(100, 50), written=(100, 49))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        scheduler.queue_advance(queue.pk)
    candles, trades = _s(queue, CONN_C), _s(queue, CONN_T)
    assert candles.state == StepState.STOPPING
    assert candles.drain_requested_at is not None and candles.stop_requested_at is not None
    assert candles.message.startswith("Drained: wrote 100 of 100")
    assert trades.state == StepState.RUNNING and trades.drain_requested_at is None
    assert len(callbacks) >= 1  # the step_stop_task of the drained connector


def test_it_does_not_drain_while_a_loader_still_runs(queue):
    _loaders_done_connectors_running(queue, loaded=(100, 50), written=(100, 50))
    _put(queue, LOADER_C, StepState.RUNNING, finished_at=None)
    scheduler.queue_advance(queue.pk)
    assert _s(queue, CONN_C).state == StepState.RUNNING
    assert _s(queue, CONN_T).state == StepState.STOPPING  # its own loader is done


def test_it_drains_an_idle_connector_after_the_idle_time(queue, settings):
    settings.DRAIN_IDLE_SECONDS = 60
    _loaders_done_connectors_running(queue, loaded=(100, 50), written=(10, 5), at=_ago(600))
    scheduler.queue_advance(queue.pk)
    candles = _s(queue, CONN_C)
    assert candles.state == StepState.STOPPING and candles.drain_requested_at is not None
    assert "idle" in candles.message and "10 of 100" in candles.message


def test_it_does_not_drain_a_connector_that_is_still_busy(queue, settings):
    settings.DRAIN_IDLE_SECONDS = 60
    _loaders_done_connectors_running(queue, loaded=(100, 50), written=(10, 5), at=_ago(600))
    QueueRequest.objects.filter(pk=_s(queue, CONN_C).pk).update(last_progress_at=_ago(5))
    scheduler.queue_advance(queue.pk)
    assert _s(queue, CONN_C).state == StepState.RUNNING
    assert _s(queue, CONN_T).state == StepState.STOPPING


# --- failure policy and stop --------------------------------------------------------------------


def test_it_fails_the_queue_and_stops_everything_on_a_failure(queue, settings):
    settings.FAILURE_POLICY = "stop_queue"
    _put(queue, CONN_C, StepState.RUNNING, started_at=timezone.now())
    _put(queue, CONN_T, StepState.PENDING)
    _put(queue, LOADER_C, StepState.FAILED, message="exchange said 429")
    assert scheduler.queue_advance(queue.pk) == []
    states = _states(queue)
    assert states[CONN_C] == states[CONN_T] == StepState.STOPPING
    for key in (LOADER_T, GRAPH, TRAIN):
        step = _s(queue, key)
        assert step.state == StepState.STOPPED and step.message.startswith("Cancelled")
    assert _s(queue, LOADER_C).state == StepState.FAILED
    queue.refresh_from_db()
    # Not finished while the connectors stop; failed once they ended.
    assert queue.status == QueueStatus.STOPPING and "loader" in queue.message
    for key in (CONN_C, CONN_T):
        _put(queue, key, StepState.STOPPED)
    scheduler.queue_advance(queue.pk)
    queue.refresh_from_db()
    assert queue.status == QueueStatus.FAILED
    assert "exchange said 429" in queue.message and "loader-producer" in queue.message


def test_it_treats_a_lost_step_as_a_failure(queue, settings):
    settings.FAILURE_POLICY = "stop_queue"
    _put(queue, CONN_C, StepState.LOST, message="The workload vanished.")
    scheduler.queue_advance(queue.pk)
    assert _s(queue, GRAPH).state == StepState.STOPPED
    queue.refresh_from_db()
    assert queue.status == QueueStatus.FAILED and "vanished" in queue.message


def test_it_lets_other_branches_go_on_with_policy_continue(queue, settings):
    settings.FAILURE_POLICY = "continue"
    _put(queue, CONN_C, StepState.FAILED, message="crashed")
    _put(queue, CONN_T, StepState.RUNNING, started_at=timezone.now())
    launched = scheduler.queue_advance(queue.pk)
    assert launched == [_s(queue, LOADER_T).pk]  # the healthy branch goes on
    assert _s(queue, CONN_T).state == StepState.RUNNING
    for key in (LOADER_C, GRAPH, TRAIN):  # unreachable: cancelled
        step = _s(queue, key)
        assert step.state == StepState.STOPPED and step.message.startswith("Cancelled")


def test_it_launches_nothing_once_a_stop_was_requested(queue):
    Queue.objects.filter(pk=queue.pk).update(stop_requested_at=timezone.now())
    assert scheduler.queue_advance(queue.pk) == []
    assert set(_states(queue).values()) == {StepState.WAITING}


def test_it_ignores_a_deleted_queue():
    assert scheduler.queue_advance(987654321) == []


# --- reconcile ----------------------------------------------------------------------------------


class FakeLauncher:
    """The launcher the scheduler talks to: answers with set observations, records stop calls."""

    name = "fake"

    def __init__(self, observations=None, logs="line 1\nline 2\n"):
        self.observations = observations or {}
        self.stops: list[tuple[str, bool]] = []
        self.output = logs

    def status(self, step):
        return self.observations.get(step.name, Observation(Phase.RUNNING))

    def stop(self, step, *, force: bool):
        self.stops.append((step.name, force))

    def logs(self, step, *, tail_bytes: int):
        return self.output[-tail_bytes:]


def _apply(step, phase, reason="", launcher=None):
    launcher = launcher or FakeLauncher()
    changed = scheduler.apply_observation(step, Observation(phase, reason), launcher=launcher, now=timezone.now())
    step.refresh_from_db()
    return changed


def test_it_marks_a_pending_step_running_when_its_workload_runs(queue):
    step = _put(queue, CONN_C, StepState.PENDING)
    assert _apply(step, Phase.RUNNING) is True
    assert step.state == StepState.RUNNING and step.started_at is not None


def test_it_surfaces_the_reason_of_a_pending_workload(queue):
    step = _put(queue, CONN_C, StepState.PENDING)
    assert _apply(step, Phase.PENDING, "ImagePullBackOff") is False
    assert step.state == StepState.PENDING and step.message == "ImagePullBackOff"


@pytest.mark.parametrize(
    "phase, reason, state, message",
    [
        (Phase.SUCCEEDED, "", StepState.SUCCEEDED, "Completed."),
        (Phase.FAILED, "exited with code 3", StepState.FAILED, "exited with code 3"),
        (Phase.FAILED, "", StepState.FAILED, "The workload failed."),
        (Phase.MISSING, "", StepState.LOST, "The workload vanished."),
    ],
)
def test_it_ends_a_running_step_as_its_workload_ended(queue, phase, reason, state, message):
    step = _put(queue, CONN_C, StepState.RUNNING, started_at=timezone.now())
    assert _apply(step, phase, reason) is True
    assert step.state == state and step.message == message
    assert step.finished_at is not None
    assert step.logs == "line 1\nline 2\n"  # kept when the step ends


def test_it_keeps_no_logs_when_the_launcher_cannot_read_them(queue):
    class NoLogs(FakeLauncher):
        def logs(self, step, *, tail_bytes):
            raise LaunchError("pod gone")

    step = _put(queue, CONN_C, StepState.RUNNING)
    assert _apply(step, Phase.FAILED, "OOMKilled", launcher=NoLogs()) is True
    assert step.state == StepState.FAILED and step.logs == ""


def test_it_forces_a_stop_after_the_grace_period(queue, settings):
    settings.STOP_GRACE_SECONDS = 30
    launcher = FakeLauncher()
    recent = _put(queue, CONN_C, StepState.STOPPING, stop_requested_at=_ago(5))
    assert _apply(recent, Phase.RUNNING, launcher=launcher) is False
    assert launcher.stops == []
    late = _put(queue, CONN_T, StepState.STOPPING, stop_requested_at=_ago(31))
    assert _apply(late, Phase.RUNNING, launcher=launcher) is False
    assert launcher.stops == [(late.name, True)]
    assert late.state == StepState.STOPPING


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.MISSING])
def test_it_ends_a_stopping_step_as_stopped_or_drained(queue, phase):
    stopped = _put(queue, CONN_C, StepState.STOPPING, stop_requested_at=_ago(1), message="Stop requested by ops.")
    drained = _put(queue, CONN_T, StepState.STOPPING, stop_requested_at=_ago(1), drain_requested_at=_ago(1),
                   message="Drained: wrote 50 of 50 records.")  # fmt: skip
    assert _apply(stopped, phase) and _apply(drained, phase)
    assert stopped.state == StepState.STOPPED and stopped.message == "Stop requested by ops."
    assert drained.state == StepState.SUCCEEDED and drained.message.startswith("Drained")
    assert stopped.logs and drained.logs


def test_it_relaunches_a_step_stuck_in_launching(queue, settings, monkeypatch):
    settings.LAUNCH_STUCK_SECONDS = 30
    launcher = FakeLauncher()
    monkeypatch.setattr(scheduler, "get_launcher", lambda: launcher)
    sent: list[int] = []
    on_task(monkeypatch, "step_launch_task", lambda pk: sent.append(pk))
    stuck = _put(queue, CONN_C, StepState.LAUNCHING, state_changed_at=_ago(120))
    fresh = _put(queue, CONN_T, StepState.LAUNCHING, state_changed_at=_ago(2))
    summary = scheduler.reconcile()
    assert sent == [stuck.pk]
    assert summary["relaunched"] == 1
    stuck.refresh_from_db()
    assert stuck.state == StepState.LAUNCHING and stuck.next_launch_at > timezone.now()
    assert fresh.pk not in sent
    assert scheduler.reconcile()["relaunched"] == 0  # a new deadline: not sent again right away


def test_it_reconciles_every_launched_step_with_the_launcher(queue, monkeypatch):
    launcher = FakeLauncher({
        _s(queue, CONN_C).name: Observation(Phase.MISSING, "deleted by hand"),
        _s(queue, CONN_T).name: Observation(Phase.RUNNING),
    })  # fmt: skip
    monkeypatch.setattr(scheduler, "get_launcher", lambda: launcher)
    _put(queue, CONN_C, StepState.RUNNING, started_at=timezone.now(), launched_at=timezone.now())
    _put(queue, CONN_T, StepState.PENDING, launched_at=timezone.now())
    summary = scheduler.reconcile()
    assert summary["observed"] == 2 and summary["changed"] == 2
    assert _s(queue, CONN_C).state == StepState.LOST and _s(queue, CONN_C).message == "deleted by hand"
    assert _s(queue, CONN_T).state == StepState.STOPPING  # the queue failed (policy stop_queue) in the same pass
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPING and "deleted by hand" in queue.message


def test_it_does_not_end_a_step_on_a_stale_view_after_a_concurrent_stop(queue):
    # Reconcile loaded the step as running; a stop landed before the observation was applied and
    # the SIGTERM'd workload exited non-zero. The stop, not a failure, is what happened.
    stale = _put(queue, CONN_C, StepState.RUNNING, started_at=timezone.now())
    QueueRequest.objects.filter(pk=stale.pk).update(state=StepState.STOPPING, stop_requested_at=timezone.now(),
                                                    message="Stop requested by ops.")  # fmt: skip
    assert scheduler.apply_observation(stale, Observation(Phase.FAILED, "exited with code -15"),
                                       launcher=FakeLauncher(), now=timezone.now()) is False  # fmt: skip
    assert _s(queue, CONN_C).state == StepState.STOPPING
    fresh = _s(queue, CONN_C)  # the next pass sees the stop
    assert _apply(fresh, Phase.FAILED, "exited with code -15") is True
    assert fresh.state == StepState.STOPPED and fresh.message == "Stop requested by ops."



def test_it_keeps_advancing_the_healthy_branch_of_a_failed_queue_with_policy_continue(queue, settings, monkeypatch):
    # With FAILURE_POLICY=continue the queue's status is already `failed`, but its other branch still
    # runs: the periodic pass must still drain its connector (progress events alone never advance a queue).
    settings.FAILURE_POLICY = "continue"
    monkeypatch.setattr(scheduler, "get_launcher", lambda: FakeLauncher())
    _loaders_done_connectors_running(queue, loaded=(100, 50), written=(100, 10))
    _put(queue, CONN_C, StepState.FAILED, message="crashed")
    scheduler.queue_advance(queue.pk)
    queue.refresh_from_db()
    assert queue.status == QueueStatus.RUNNING  # failed step, but the healthy branch still runs
    assert _s(queue, CONN_T).state == StepState.RUNNING
    QueueRequest.objects.filter(pk=_s(queue, CONN_T).pk).update(records_written=50)  # caught up since
    scheduler.reconcile()
    trades = _s(queue, CONN_T)
    assert trades.state == StepState.STOPPING and trades.drain_requested_at is not None



def test_it_launches_on_the_healthy_branch_of_a_failed_queue_when_reconcile_sees_it_run(queue, settings, monkeypatch):
    # No telemetry: only reconcile notices the trades connector runs; its loader must launch anyway.
    settings.FAILURE_POLICY = "continue"
    _put(queue, CONN_C, StepState.FAILED, message="crashed")
    _put(queue, CONN_T, StepState.PENDING, launched_at=timezone.now())
    scheduler.queue_advance(queue.pk)
    queue.refresh_from_db()
    assert queue.status == QueueStatus.RUNNING and _s(queue, LOADER_T).state == StepState.WAITING
    monkeypatch.setattr(scheduler, "get_launcher", lambda: FakeLauncher())  # observes every workload running
    scheduler.reconcile()
    assert _s(queue, CONN_T).state == StepState.RUNNING
    assert _s(queue, LOADER_T).state == StepState.LAUNCHING


# --- issue #10 §2: stop, failure and launch never leave a workload or a stuck step ----------------


class LaunchingLauncher(FakeLauncher):
    """A launcher whose launch runs `during` (what happens while the launch is in flight) and then
    'creates' the workload; records what was created and discarded."""

    def __init__(self, during=None, error: BaseException | None = None, **kwargs):
        super().__init__(**kwargs)
        self.during, self.error = during, error
        self.created: list[str] = []
        self.discarded: list[str] = []

    def launch(self, step):
        if self.during:
            self.during(step)
        if self.error is not None:
            raise self.error
        self.created.append(step.job_name)
        return {"launcher": self.name, "job_name": step.job_name}

    def discard(self, step):
        self.discarded.append(step.job_name)

    def status(self, step):
        return self.observations.get(step.name, Observation(Phase.MISSING, "not found"))


@pytest.fixture
def fake(monkeypatch):
    launcher = LaunchingLauncher()
    monkeypatch.setattr(scheduler, "get_launcher", lambda: launcher)
    on_task(monkeypatch, "step_launch_task", lambda pk: None)
    on_task(monkeypatch, "step_send_stop_task", lambda pk: None)
    on_task(monkeypatch, "queue_advance_task", lambda pk: None)
    on_task(monkeypatch, "step_discard_task", lambda pk, name: scheduler.step_discard(pk, job_name=name))
    return launcher


def _stop_and_reconcile(queue, key):
    from jobs.services import step_stop

    def during(step):
        step_stop(step=_s(queue, key))
        scheduler.reconcile()

    return during


def test_it_does_not_end_a_stopping_step_while_its_launch_is_in_flight(queue, fake):
    """Issue #10 §2 "Stop racing a launch": reconcile sees no workload yet; missing is not gone."""
    step = _put(queue, CONN_C, StepState.LAUNCHING)
    fake.during = _stop_and_reconcile(queue, CONN_C)

    assert launching.step_launch(step.pk) == "launched"

    step.refresh_from_db()
    assert step.state == StepState.STOPPING  # not ended while the launch was creating the workload
    assert step.launched_at is not None and fake.discarded == []  # the stop flow now owns the workload
    fake.observations[step.name] = Observation(Phase.MISSING, "gone")
    scheduler.reconcile()  # the launch is known to have happened: missing now means gone
    assert _s(queue, CONN_C).state == StepState.STOPPED


def test_it_removes_what_a_launch_created_after_the_step_ended(queue, fake, settings):
    """Issue #10 §2 "Stop racing a launch": the attempt outlived its deadline, a stop ended the step,
    then the launch returned: what it created is removed at once."""
    step = _put(queue, CONN_C, StepState.LAUNCHING)

    def during(step_):
        QueueRequest.objects.filter(pk=step_.pk).update(next_launch_at=_ago(1))  # the attempt's deadline passed
        _stop_and_reconcile(queue, CONN_C)(step_)
        assert _s(queue, CONN_C).state == StepState.STOPPED

    fake.during = during
    launching.step_launch(step.pk)

    assert fake.created == [step.job_name] and fake.discarded == [step.job_name]
    step.refresh_from_db()
    assert step.state == StepState.STOPPED and step.launched_at is None


def test_it_removes_what_a_late_launch_created_for_an_earlier_run(queue, fake):
    """Issue #10 §2 "Stop racing a launch": run 1's launch returns after a retry started run 2."""
    from jobs.services import queue_retry

    step = _put(queue, CONN_C, StepState.LAUNCHING)
    first_job = step.job_name

    def during(step_):
        QueueRequest.objects.filter(pk=step_.pk).update(state=StepState.FAILED)
        Queue.objects.filter(pk=queue.pk).update(status=QueueStatus.FAILED)
        queue_retry(queue=queue)
        scheduler.queue_advance(queue.pk)
        assert _s(queue, CONN_C).state == StepState.LAUNCHING and _s(queue, CONN_C).run == 2

    fake.during = during
    launching.step_launch(step.pk)

    assert fake.discarded == [first_job]  # run 1's workload only
    second = _s(queue, CONN_C)
    assert second.state == StepState.LAUNCHING and second.launched_at is None and second.job_name != first_job


def test_it_writes_the_queue_status_from_the_locked_row_after_a_launch(queue, fake):
    """Issue #10 §2 "Queue status": a stop landing during a launch must not flap the queue to running."""
    from jobs.services import queue_stop

    step = _put(queue, CONN_C, StepState.LAUNCHING)
    fake.during = lambda step_: queue_stop(queue=Queue.objects.get(pk=queue.pk))

    launching.step_launch(step.pk)

    queue.refresh_from_db()
    assert _s(queue, CONN_C).state == StepState.STOPPING
    assert queue.status == QueueStatus.STOPPING


@pytest.mark.parametrize("error", [
    RuntimeError("client bug"),
    TimeoutError("read timed out"),
    __import__("celery.exceptions", fromlist=["SoftTimeLimitExceeded"]).SoftTimeLimitExceeded("soft time limit"),
    LaunchError("HTTP 503"),
], ids=["client-error", "timeout", "soft-time-limit", "transient-launch-error"])
def test_it_fails_the_step_once_any_launch_error_spent_the_budget(queue, fake, settings, error):
    """Issue #10 §2 "Launch budget": any exception counts; once spent, the step fails with the reason."""
    from jobs.tasks import step_launch_task

    settings.LAUNCH_MAX_ATTEMPTS = 3
    settings.LAUNCH_RETRY_BACKOFF_SECONDS = 0
    fake.error = error
    step = _put(queue, CONN_C, StepState.LAUNCHING)

    step_launch_task.apply(args=[step.pk])  # eager: the task's retries run in line

    step.refresh_from_db()
    assert step.state == StepState.FAILED
    assert step.launch_attempts == 3
    assert str(error) in step.message and "3 attempts" in step.message


def test_it_keeps_one_budget_across_a_resent_launch(queue, fake, settings):
    """Issue #10 §2 "Launch budget": a launch re-sent by reconcile continues the spent budget."""
    from jobs.tasks import step_launch_task

    settings.LAUNCH_MAX_ATTEMPTS = 5
    step = _put(queue, CONN_C, StepState.LAUNCHING, launch_attempts=5,
                message="Launch attempt 5 of 5 failed: read timed out")  # fmt: skip

    step_launch_task.apply(args=[step.pk])

    step.refresh_from_db()
    assert fake.created == []
    assert step.state == StepState.FAILED and "read timed out" in step.message and step.launch_attempts == 5


def test_it_does_not_resend_a_launch_that_is_backing_off(queue, fake, settings, monkeypatch):
    """Issue #10 §2 "Launch budget": no second retry chain beside one still backing off."""
    settings.LAUNCH_STUCK_SECONDS = 30
    settings.LAUNCH_RETRY_BACKOFF_SECONDS = 60
    sent: list[int] = []
    on_task(monkeypatch, "step_launch_task", lambda pk: sent.append(pk))
    step = _put(queue, CONN_C, StepState.LAUNCHING, state_changed_at=_ago(120))
    fake.error = LaunchError("HTTP 503")
    with pytest.raises(Exception):  # the task retries it after the backoff
        launching.step_launch(step.pk)

    assert scheduler.reconcile()["relaunched"] == 0
    assert sent == []
    step.refresh_from_db()
    assert step.state == StepState.LAUNCHING and step.launch_attempts == 1 and "HTTP 503" in step.message


def test_it_removes_the_workload_of_a_step_failed_by_telemetry(queue, fake, django_capture_on_commit_callbacks):
    """Issue #10 §2 "Failed by telemetry": the workload goes, with its logs kept first."""
    from jobs.telemetry import ingest_events

    step = _put(queue, CONN_C, StepState.RUNNING, started_at=timezone.now(), launched_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        ingest_events([{"queue_id": queue.queue_id, "producer": step.telemetry_id, "status": "error",
                        "error_message": "disk full"}])  # fmt: skip

    step.refresh_from_db()
    assert step.state == StepState.FAILED
    assert fake.discarded == [step.job_name]
    assert step.logs == "line 1\nline 2\n"


def test_it_kills_a_local_process_started_after_a_stop_ended_its_step(queue, tmp_path, monkeypatch):
    """Issue #10 §2 "Stop racing a launch" (local launcher): the process started by a launch that
    returned after the step ended is killed."""
    import os
    import sys
    import time as time_

    from jobs.launchers.local import LocalLauncher, _alive, _read_json
    from jobs.services import step_stop

    class RacingLocal(LocalLauncher):
        def launch(self, step_):
            QueueRequest.objects.filter(pk=step_.pk).update(next_launch_at=_ago(1))  # the attempt's deadline passed
            step_stop(step=_s(queue, CONN_C))
            scheduler.reconcile()
            assert _s(queue, CONN_C).state == StepState.STOPPED
            return super().launch(step_)

    launcher = RacingLocal(tmp_path, [sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setattr(scheduler, "get_launcher", lambda: launcher)
    for task in ("step_launch_task", "step_send_stop_task", "queue_advance_task", "step_discard_task"):
        on_task(monkeypatch, task, lambda *args: None)
    step = _put(queue, CONN_C, StepState.LAUNCHING)

    launching.step_launch(step.pk)

    process = _read_json(launcher.state_dir(step) / "process.json")
    assert process is not None  # the launch did start it
    try:
        deadline = time_.monotonic() + 10  # SIGKILL is delivered asynchronously
        while _alive(process["pid"]) and time_.monotonic() < deadline:
            time_.sleep(0.05)
        assert not _alive(process["pid"])
    finally:
        if _alive(process["pid"]):
            os.killpg(process["pgid"], 9)
    assert _s(queue, CONN_C).state == StepState.STOPPED
