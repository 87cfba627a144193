"""Issue #12 launch_create_to_ready_jobs: the first advance of a new queue, counted in round trips.

The advance holds the queue's lock and every step of the queue (read under it): the status refresh
needs neither a second lock of the row it holds nor a second read of the states it holds, and the
change count it acted on comes off in the same UPDATE as the status. Counted by captured statements
(Django logs BEGIN and COMMIT too), never timed; what the queue shows afterwards is pinned beside.
"""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import advance
from queues.models import Queue, QueueStatus, StepState
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_first_advance_of_the_example_locks_and_reads_once_and_writes_the_queue_once(monkeypatch):
    """Case: create → first advance round trips — BEGIN, the lock, the steps with their upstream edges,
    ONE UPDATE for the steps it launches (was one per step), one UPDATE of the queue (status, started_at
    and the change count together), COMMIT: 6 for the example's two connectors (was 11: a read of the
    edges apart, a second lock, a read of the states, a second UPDATE; then 7)."""
    monkeypatch.setattr("jobs.tasks.step_launch_task.apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr("jobs.tasks.steps_launch_task.apply_async", lambda *args, **kwargs: None)
    queue = make_queue(queue_id="advance-trips", first_advance=False)
    before = Queue.objects.get(pk=queue.pk)
    assert before.changes_pending > 0 and before.status == QueueStatus.PENDING  # what the advance acts on

    with CaptureQueriesContext(connection) as queries:
        launched = advance.queue_advance(queue.pk)

    statements = [q["sql"] for q in queries.captured_queries]
    assert len(launched) == 2
    assert len([sql for sql in statements if "FOR NO KEY UPDATE" in sql]) == 1, statements
    assert not [sql for sql in statements if sql.startswith('SELECT "queues_queuerequest"."state"')], statements
    assert len([sql for sql in statements if sql.startswith('UPDATE "queues_queue"')]) == 1, statements
    assert not [sql for sql in statements if sql.startswith('SELECT "queues_stepdependency"')], statements
    assert len([sql for sql in statements if sql.replace('"', "").startswith(
        ("UPDATE queues_queuerequest", "WITH changed_all AS (UPDATE queues_queuerequest"))]) == 1, statements
    assert len(statements) == 6, statements
    after = Queue.objects.get(pk=queue.pk)
    assert after.status == QueueStatus.RUNNING and after.started_at is not None and after.finished_at is None
    assert after.changes_pending == 0
    assert sorted(after.steps.values_list("state", flat=True)) == sorted(
        [StepState.LAUNCHING] * 2 + [StepState.WAITING] * 4)


def test_an_advance_with_nothing_to_do_writes_only_the_change_count(monkeypatch):
    """Case: the status the held steps give equals the stored one — no status write; the count of changes
    the advance acted on still comes off (one UPDATE), and a second advance writes nothing."""
    monkeypatch.setattr("jobs.tasks.step_launch_task.apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr("jobs.tasks.steps_launch_task.apply_async", lambda *args, **kwargs: None)
    queue = make_queue(queue_id="advance-idle", first_advance=False)
    advance.queue_advance(queue.pk)
    Queue.objects.filter(pk=queue.pk).update(changes_pending=3)  # e.g. telemetry counted changes meanwhile

    with CaptureQueriesContext(connection) as first:
        assert advance.queue_advance(queue.pk) == []
    with CaptureQueriesContext(connection) as second:
        assert advance.queue_advance(queue.pk) == []

    updates = [q["sql"] for q in first.captured_queries if q["sql"].startswith('UPDATE "queues_queue"')]
    assert len(updates) == 1 and '"status"' not in updates[0], updates
    assert not [q["sql"] for q in second.captured_queries if q["sql"].startswith("UPDATE")]
    after = Queue.objects.get(pk=queue.pk)
    assert after.changes_pending == 0 and after.status == QueueStatus.RUNNING


@pytest.mark.parametrize("policy", ["stop_queue", "continue"])
@pytest.mark.parametrize("name, states", [
    ("new", {}),  # a new queue: the connectors start
    ("failed", {0: StepState.RUNNING, 1: StepState.FAILED}),  # a failure: stop the queue, or go on
    ("lost", {0: StepState.SUCCEEDED, 1: StepState.SUCCEEDED, 2: StepState.LOST}),  # cancel what waits
    ("done", {i: StepState.SUCCEEDED for i in range(6)}),
])
def test_the_status_from_the_held_states_is_the_rules_from_a_fresh_read(monkeypatch, settings, policy, name, states):
    """Case: what users see is unchanged — the status (and started/finished times) the advance writes from
    the states it holds is the one the rule gives from the steps as stored after it, whatever it changed
    (launches, stops, cancellations)."""
    settings.FAILURE_POLICY = policy
    monkeypatch.setattr("jobs.tasks.step_launch_task.apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr("jobs.tasks.steps_launch_task.apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr("jobs.tasks.step_send_stop_task.apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr("jobs.tasks.step_force_stop_task.apply_async", lambda *args, **kwargs: None)
    queue = make_queue(queue_id=f"held-{policy.replace('_', '-')}-{name}", first_advance=False)
    steps = list(queue.steps.order_by("position"))
    for index, state in states.items():
        type(steps[index]).objects.filter(pk=steps[index].pk).update(state=state)

    advance.queue_advance(queue.pk)

    after = Queue.objects.get(pk=queue.pk)
    stored = list(after.steps.values_list("state", flat=True))
    assert after.status == after.derive_status(stored)
    assert (after.started_at is None) == (after.status == QueueStatus.PENDING)
    assert (after.finished_at is not None) == (after.status in QueueStatus.TERMINAL)


def test_the_advance_reads_its_steps_as_the_orm_would_without_their_logs_or_documents(monkeypatch):
    """Case: Python per advance (create → ready) — the steps and their upstream edges come from one plain
    statement (the ORM compiled and built the same query at ~5x its round trip) that leaves out what an
    advance never reads (the log tail, the JSON documents: decoding them was a third of the read); every
    other field is what the ORM gives, each step's queue is the advance's own row, the edges in upstream
    position order, and a field left out still reads (lazily) as stored."""
    monkeypatch.setattr("jobs.tasks.steps_launch_task.apply_async", lambda *args, **kwargs: None)
    queue = make_queue(queue_id="advance-read", first_advance=False)
    graph = queue.steps.get(target="graph-builder")
    type(graph).objects.filter(pk=graph.pk).update(logs="x" * 5000, extra={"note": "kept"})
    locked = Queue.objects.get(pk=queue.pk)

    with CaptureQueriesContext(connection) as queries:
        steps, upstreams = advance._steps_and_upstreams(locked)

    [sql] = [q["sql"] for q in queries.captured_queries]
    for column in ("logs", "params", "extra", "launcher_handle", "collection_inputs"):
        assert f".{column}" not in sql and f'"{column}"' not in sql, column
    expected = list(queue.steps.order_by("position"))
    assert list(steps) == [s.pk for s in expected]
    read = {f.attname for f in type(graph)._meta.concrete_fields} - {"logs", "params", "extra", "launcher_handle",
                                                                       "collection_inputs"}
    for step in expected:
        assert {k: getattr(steps[step.pk], k) for k in read} == {k: getattr(step, k) for k in read}
        assert steps[step.pk].queue is locked
        edges = step.upstream_edges.order_by("upstream__position", "upstream_id")
        assert [(up.pk, kind) for up, kind in upstreams[step.pk]] == [(e.upstream_id, e.kind) for e in edges]
    assert any(upstreams.values())
    assert steps[graph.pk].extra == {"note": "kept"} and len(steps[graph.pk].logs) == 5000


def test_the_steps_an_advance_launches_change_together_and_each_is_announced_once(monkeypatch, settings):
    """Case: what receivers see is unchanged by the one UPDATE — every launched step reaches
    `step_state_changed` once (waiting → launching), the mirror gets an outbox row for each, the message is
    cleared and state_changed_at set as a transition does; a step not waiting any more is left alone."""
    from mirror.models import MirrorOutbox
    from queues.models import QueueRequest
    from queues.signals import step_state_changed

    settings.ARANGO_ENABLED = True
    monkeypatch.setattr("mirror.tasks.enqueue_drain", lambda: None)
    monkeypatch.setattr("jobs.tasks.steps_launch_task.apply_async", lambda *args, **kwargs: None)
    monkeypatch.setattr("jobs.tasks.step_launch_task.apply_async", lambda *args, **kwargs: None)
    types = [f"api_candles_{i}" for i in ("1m", "5m", "15m")]
    queue = make_queue(queue_id="advance-together", requests=[{"target": "loader-producer", "type": t} for t in types],
                       first_advance=False)
    steps = list(queue.steps.order_by("position"))
    QueueRequest.objects.filter(pk=steps[0].pk).update(message="old note")
    MirrorOutbox.objects.all().delete()
    got = []
    step_state_changed.connect(lambda sender, step, previous, state, **kw: got.append((step.pk, previous, state)),
                               dispatch_uid="test-advance-together", weak=False)
    try:
        with CaptureQueriesContext(connection) as queries:
            assert advance.queue_advance(queue.pk) == [s.pk for s in steps]
    finally:
        step_state_changed.disconnect(dispatch_uid="test-advance-together")

    assert got == [(s.pk, StepState.WAITING, StepState.LAUNCHING) for s in steps]
    assert sorted(MirrorOutbox.objects.filter(kind="step").values_list("object_id", flat=True)) == [s.pk for s in steps]
    # The steps' outbox rows come with their UPDATE (its data-modifying WITH), not one statement per step:
    # the one INSERT left is the queue's row (its status changed).
    statements = [q["sql"] for q in queries.captured_queries]
    assert len([sql for sql in statements if sql.lstrip().startswith("INSERT")]) == 1, statements
    stored = list(queue.steps.order_by("position"))
    assert all(s.state == StepState.LAUNCHING and s.message == "" and s.state_changed_at > s.created_at
               for s in stored)
    assert advance.queue_advance(queue.pk) == []  # nothing waiting: nothing changes
