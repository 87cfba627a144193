"""Queue workflows (jobs/services.py) and the state rules of queues/models.py.

queue_stop, step_stop, step_mark_stopping, queue_retry, queue_refresh_status; Queue.derive_status;
QueueRequest.transition. DB-level: on_commit callbacks are captured, never executed.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import services
from queues import naming
from queues.models import Queue, QueueRequest, QueueStatus, StepState
from queues.signals import step_state_changed
from tests.queues.factories import UserFactory, make_queue

pytestmark = pytest.mark.django_db

W, L, P, R, S, F, X, T, LOST = (
    StepState.WAITING, StepState.LAUNCHING, StepState.PENDING, StepState.RUNNING, StepState.SUCCEEDED,
    StepState.FAILED, StepState.STOPPING, StepState.STOPPED, StepState.LOST,
)  # fmt: skip


def _at(queue, position: int) -> QueueRequest:
    return queue.steps.get(position=position)


def _put(step: QueueRequest, state: str, **fields) -> QueueRequest:
    QueueRequest.objects.filter(pk=step.pk).update(state=state, **fields)
    step.refresh_from_db()
    return step


def _tasks(callbacks) -> list:
    """The on-commit callbacks that send tasks (metrics are recorded on commit too)."""
    return [c for c in callbacks if "enqueue_on_commit" in c.__qualname__]


# --- Queue.derive_status ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "states, stop_requested, expected",
    [
        ([W, W, W], False, QueueStatus.PENDING),
        ([], False, QueueStatus.PENDING),
        ([L, W, W], False, QueueStatus.RUNNING),
        ([R, P, W], False, QueueStatus.RUNNING),
        ([S, S, W], False, QueueStatus.RUNNING),
        ([S, X, R], False, QueueStatus.RUNNING),  # a drained consumer on its way out
        ([S, S, S], False, QueueStatus.SUCCEEDED),
        ([S, F, T], False, QueueStatus.FAILED),
        ([S, T, T], False, QueueStatus.STOPPED),  # a step stopped by its worker; nothing runs any more
        ([S, LOST, T], True, QueueStatus.FAILED),  # a failure wins over a stop once all ended
        # A failed queue is not finished while other steps still run, wait or stop.
        ([R, LOST, W], False, QueueStatus.RUNNING),  # FAILURE_POLICY=continue: the rest goes on
        ([F, X, T], False, QueueStatus.STOPPING),  # stop_queue: the others are being stopped
        ([R, F], True, QueueStatus.STOPPING),
        ([X, T, W], True, QueueStatus.STOPPING),
        ([L, T], True, QueueStatus.STOPPING),
        ([T, T, S], True, QueueStatus.STOPPED),
        ([W, W], True, QueueStatus.STOPPED),
    ],
)
def test_it_derives_the_queue_status_from_its_steps(states, stop_requested, expected):
    queue = Queue(stop_requested_at=timezone.now() if stop_requested else None)
    assert queue.derive_status(states) == expected


# --- QueueRequest.transition --------------------------------------------------------------------


def test_it_changes_state_only_from_the_allowed_states():
    step = _at(make_queue(queue_id="tr-q"), 0)
    received = []

    def on_change(sender, step, previous, state, **kwargs):
        received.append((previous, state))

    step_state_changed.connect(on_change, dispatch_uid="test-services-transition")
    try:
        assert step.transition(R, from_states=[P]) is False  # it is waiting
        assert QueueRequest.objects.get(pk=step.pk).state == W and received == []
        assert step.transition(L, from_states=[W], message="go") is True
        assert step.transition(L, from_states=[W]) is False  # a second actor loses the race
        assert step.transition(F, message="boom") is True
    finally:
        step_state_changed.disconnect(dispatch_uid="test-services-transition")
    stored = QueueRequest.objects.get(pk=step.pk)
    assert stored.state == F and stored.message == "boom" and stored.finished_at is not None
    assert received == [(W, L), (L, F)]


# --- queue_stop / step_stop / step_mark_stopping ------------------------------------------------


def test_it_stops_a_queue_cancelling_waiting_and_stopping_launched_steps(django_capture_on_commit_callbacks):
    queue = make_queue(queue_id="stop-q")
    running = _put(_at(queue, 2), R, started_at=timezone.now())
    pending = _put(_at(queue, 3), P)
    done = _put(_at(queue, 0), S)
    user = UserFactory(username="ops")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.queue_stop(queue=queue, user=user)
    queue.refresh_from_db()
    assert queue.stop_requested_at is not None and queue.message == "Stop requested by ops."
    assert queue.status == QueueStatus.STOPPING
    for step in (running, pending, done):
        step.refresh_from_db()
    assert running.state == pending.state == X and running.stop_requested_at is not None
    assert done.state == S
    for position in (1, 4, 5):
        step = _at(queue, position)
        assert step.state == T and step.message.startswith("Cancelled")
    # One queue_send_stop_task and one queue_force_stop_task (due at the grace period's end) for the
    # queue's launched steps, whatever their number (issue #12), and the queue_advance.
    assert len(_tasks(callbacks)) == 3


def test_it_stops_a_queue_only_once(django_capture_on_commit_callbacks):
    queue = make_queue(queue_id="stop-twice-q")
    _put(_at(queue, 2), R)
    services.queue_stop(queue=queue, reason="first")
    queue.refresh_from_db()
    requested, message = queue.stop_requested_at, queue.message
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = services.queue_stop(queue=queue, reason="second")
    assert callbacks == []  # nothing sent again
    again.refresh_from_db()
    assert (again.stop_requested_at, again.message) == (requested, message) == (requested, "first")
    assert _at(queue, 2).state == X


def test_it_cancels_a_launching_step_whose_launch_no_one_claimed_yet(django_capture_on_commit_callbacks):
    """Case: a queue stopped right after its submission (its first steps `launching`, their launch task
    not yet run — or lost with the broker) ends at once, as a queue of waiting steps does: no attempt was
    claimed, so no workload can exist, and the launch task finds nothing left to launch. A step whose
    attempt was claimed (its API calls may be in flight) is stopped through the launcher, as before."""
    queue = make_queue(queue_id="stop-unclaimed-q")
    unclaimed = [s for s in queue.steps.order_by("position") if s.state == L]
    assert len(unclaimed) == 2 and {s.launch_attempts for s in unclaimed} == {0}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.queue_stop(queue=queue)
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPED and queue.finished_at is not None
    for step in unclaimed:
        step.refresh_from_db()
        assert step.state == T and step.message.startswith("Cancelled") and step.stop_requested_at is not None
    assert len(_tasks(callbacks)) == 1  # the queue_advance: no stop command, no forced stop

    claimed = make_queue(queue_id="stop-claimed-q")
    first, second = [s for s in claimed.steps.order_by("position") if s.state == L]
    _put(first, L, launch_attempts=1, next_launch_at=timezone.now() + timedelta(minutes=1))  # POSTs in flight
    services.queue_stop(queue=claimed)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, second.state) == (X, T)
    claimed.refresh_from_db()
    assert claimed.status == QueueStatus.STOPPING


def test_it_ends_a_queue_with_only_waiting_steps_as_stopped():
    queue = make_queue(queue_id="stop-waiting-q", first_advance=False)
    services.queue_stop(queue=queue)
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPED and queue.finished_at is not None
    assert set(queue.steps.values_list("state", flat=True)) == {T}


@pytest.mark.parametrize("status", [QueueStatus.SUCCEEDED, QueueStatus.FAILED, QueueStatus.STOPPED])
def test_it_does_nothing_when_stopping_a_finished_queue(status, django_capture_on_commit_callbacks):
    queue = make_queue(queue_id="done-q", first_advance=False)
    Queue.objects.filter(pk=queue.pk).update(status=status, message="as it was")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.queue_stop(queue=queue)
    queue.refresh_from_db()
    assert queue.stop_requested_at is None and queue.message == "as it was" and queue.status == status
    assert set(queue.steps.values_list("state", flat=True)) == {W}
    assert callbacks == []


def test_it_does_nothing_when_stopping_an_ended_step():
    queue = make_queue(queue_id="ended-step-q")
    step = _put(_at(queue, 0), S, message="done")
    services.step_stop(step=step)
    step.refresh_from_db()
    assert step.state == S and step.message == "done" and step.stop_requested_at is None


def test_it_marks_a_drain_stop_and_leaves_a_stopping_step_alone(django_capture_on_commit_callbacks):
    queue = make_queue(queue_id="drain-q")
    step = _put(_at(queue, 2), R)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.step_mark_stopping(step=step, reason="Drained: wrote 5 of 5 records.", drain=True)
    step.refresh_from_db()
    assert step.state == X and step.drain_requested_at is not None and len(callbacks) == 2  # send stop, force stop
    first = step.stop_requested_at
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.step_mark_stopping(step=step, reason="again")
    step.refresh_from_db()
    assert callbacks == [] and step.stop_requested_at == first and step.message.startswith("Drained")


# --- queue_retry --------------------------------------------------------------------------------


def test_it_retries_failed_stopped_and_lost_steps_as_a_new_run(django_capture_on_commit_callbacks):
    queue = make_queue(queue_id="retry-q")
    past = timezone.now() - timedelta(minutes=5)
    failed = _put(_at(queue, 0), F, message="boom", records_written=10, launch_attempts=2, launched_at=past,
                  started_at=past, finished_at=past, launcher_handle={"pid": 1}, reported_status="error")  # fmt: skip
    stopped = _put(_at(queue, 2), T, stop_requested_at=past, drain_requested_at=past, finished_at=past)
    lost = _put(_at(queue, 3), LOST, finished_at=past)
    done = _put(_at(queue, 1), S, records_written=7)
    Queue.objects.filter(pk=queue.pk).update(status=QueueStatus.FAILED, stop_requested_at=past, message="failed", finished_at=past)
    queue.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        count = services.queue_retry(queue=queue, user=UserFactory(username="ops"))
    assert count == 3 and len(callbacks) == 1  # one queue_advance
    for step in (failed, stopped, lost):
        step.refresh_from_db()
        assert step.state == W and step.run == 2
        assert step.job_name == naming.job_name(queue.queue_id, step.target, step.number, 2)
        assert step.job_name.endswith("-r2")
        assert step.stop_requested_at is None and step.drain_requested_at is None
        assert step.finished_at is None and step.launched_at is None and step.started_at is None
        assert step.records_written == 0 and step.launch_attempts == 0 and step.launcher_handle == {}
        assert step.message == "Retry requested by ops."
    done.refresh_from_db()
    assert done.state == S and done.run == 1 and done.records_written == 7
    queue.refresh_from_db()
    assert queue.stop_requested_at is None and queue.finished_at is None and queue.message == ""
    assert queue.status == QueueStatus.RUNNING  # one step already succeeded


def test_it_numbers_each_retry_run():
    queue = make_queue(queue_id="retry-runs-q")
    step = _put(_at(queue, 0), F)
    Queue.objects.filter(pk=queue.pk).update(status=QueueStatus.FAILED)
    services.queue_retry(queue=queue)
    _put(step, F)
    Queue.objects.filter(pk=queue.pk).update(status=QueueStatus.FAILED)
    assert services.queue_retry(queue=queue) == 1
    step.refresh_from_db()
    assert step.run == 3 and step.job_name.endswith("-r3")


def test_it_has_nothing_to_retry_in_a_healthy_queue(django_capture_on_commit_callbacks):
    queue = make_queue(queue_id="healthy-q")
    _put(_at(queue, 2), R)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.queue_retry(queue=queue) == 0
    assert callbacks == []
    succeeded = make_queue(queue_id="all-done-q")
    QueueRequest.objects.filter(queue=succeeded).update(state=S)
    Queue.objects.filter(pk=succeeded.pk).update(status=QueueStatus.SUCCEEDED)
    assert services.queue_retry(queue=succeeded) == 0
    assert set(succeeded.steps.values_list("run", flat=True)) == {1}


# --- queue_refresh_status -----------------------------------------------------------------------


def test_it_records_when_a_queue_started_and_finished():
    queue = make_queue(queue_id="times-q", first_advance=False)
    assert services.queue_refresh_status(queue=queue) == QueueStatus.PENDING
    assert queue.started_at is None
    _put(_at(queue, 2), L)
    assert services.queue_refresh_status(queue=queue) == QueueStatus.RUNNING
    queue.refresh_from_db()
    started = queue.started_at
    assert started is not None and queue.finished_at is None
    QueueRequest.objects.filter(queue=queue).update(state=S)
    assert services.queue_refresh_status(queue=queue) == QueueStatus.SUCCEEDED
    queue.refresh_from_db()
    assert queue.started_at == started and queue.finished_at is not None


# --- issue #10 §2: queue status only under the queue's lock; transition metrics on commit ----------


def _finished_count(outcome: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("streamforge_queues_finished_total", {"outcome": outcome}) or 0.0


def test_it_counts_a_queue_finish_once_when_two_writers_hold_stale_copies():
    """Issue #10 §2 "Queue status": the status is derived from the locked row, never from a caller's
    copy, so two refreshes from copies read before the finish send one finish, not two."""
    from queues.signals import queue_status_changed

    queue = make_queue(queue_id="stale-copies-q", first_advance=False)
    first, second = Queue.objects.get(pk=queue.pk), Queue.objects.get(pk=queue.pk)  # both see `pending`
    QueueRequest.objects.filter(queue=queue).update(state=S)
    finishes = []

    def on_change(sender, queue, previous, status, **kwargs):
        finishes.append((previous, status))

    queue_status_changed.connect(on_change, dispatch_uid="test-stale-copies")
    try:
        services.queue_refresh_status(queue=first)
        services.queue_refresh_status(queue=second)
    finally:
        queue_status_changed.disconnect(dispatch_uid="test-stale-copies")
    assert finishes == [(QueueStatus.PENDING, QueueStatus.SUCCEEDED)]
    assert second.status == QueueStatus.SUCCEEDED


def test_it_counts_a_finished_queue_in_the_metrics_only_on_commit(django_capture_on_commit_callbacks):
    """Issue #10 §2 "Queue status": metrics that count transitions are recorded on commit."""
    queue = make_queue(queue_id="metrics-on-commit-q")
    QueueRequest.objects.filter(queue=queue).update(state=S)
    before = _finished_count("succeeded")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.queue_refresh_status(queue=queue)
        assert _finished_count("succeeded") == before  # nothing counted before the commit
    for callback in callbacks:
        callback()
    assert _finished_count("succeeded") == before + 1


def test_a_stop_with_the_mirror_on_writes_each_steps_record_with_its_update(settings, monkeypatch):
    """Case: the mirror's outbox rows of the steps a stop changes come with the UPDATE that changes them
    (one statement per group, whatever the number of steps; was one upsert more per step), and every
    changed step has its row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mirror.models import MirrorOutbox

    settings.ARANGO_ENABLED = True
    monkeypatch.setattr("mirror.tasks.enqueue_drain", lambda: None)
    types = [f"api_candles_{i}" for i in ("1m", "5m", "15m", "1h", "4h")]

    def stop_statements(queue_id: str, n: int) -> int:
        queue = make_queue(queue_id=queue_id, requests=[{"target": "loader-producer", "type": t} for t in types[:n]],
                           first_advance=False)
        steps = list(queue.steps.order_by("position"))
        QueueRequest.objects.filter(pk__in=[s.pk for s in steps[1:]]).update(state=R)  # one waiting, the rest running
        MirrorOutbox.objects.all().delete()
        with CaptureQueriesContext(connection) as queries:
            services.queue_stop(queue=queue)
        assert sorted(MirrorOutbox.objects.filter(kind="step").values_list("object_id", flat=True)) == [s.pk for s in steps]
        assert dict(queue.steps.values_list("pk", "state")) == {s.pk: T if s is steps[0] else X for s in steps}
        return len(queries)

    assert stop_statements("stop-mirror-2", 2) == stop_statements("stop-mirror-5", 5)


def test_a_transition_in_a_transaction_writes_its_record_in_its_own_statement(settings, monkeypatch):
    """Case: with the mirror on, a step's change inside a caller's transaction (an advance cancelling a step,
    telemetry ending one) is one statement with its outbox row (was the UPDATE, then an upsert)."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from mirror.models import MirrorOutbox

    settings.ARANGO_ENABLED = True
    monkeypatch.setattr("mirror.tasks.enqueue_drain", lambda: None)
    step = _at(make_queue(queue_id="one-statement-q", first_advance=False), 0)
    MirrorOutbox.objects.all().delete()
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert step.transition(T, from_states=[W], message="Cancelled: test")
        assert not step.transition(T, from_states=[W])  # nothing matched: nothing recorded
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["WITH", "WITH"]
    assert list(MirrorOutbox.objects.values_list("kind", "object_id")) == [("step", step.pk)]
