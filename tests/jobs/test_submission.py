"""Issue #12 launch_create_to_ready_jobs: a queue is submitted and advanced in one transaction.

The submission holds the queue row (no one else sees it before the commit) and every step it has just
inserted, so its first advance takes neither the lock nor the read a `queue_advance` task makes, and
what the commit sends is the ready steps' launch — not an advance that would then send it. Round trips
are counted from the captured statements (Django logs BEGIN and COMMIT too), never timed; what the
queue shows afterwards, and what receivers and the broker see, is pinned beside.
"""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import advance
from jobs.announce import QUEUE_ADVANCE, STEP_LAUNCH, STEPS_LAUNCH
from jobs.submission import queue_create
from queues.models import AuditEntry, Queue, QueueRequest, QueueStatus, StepState
from tests.jobs.helpers import state_changes
from tests.queues.factories import payload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch):
    """(task name, args) of every orchestration task sent, in order (none reaches a broker)."""
    tasks: list[tuple[str, tuple]] = []
    for name in (QUEUE_ADVANCE, STEP_LAUNCH, STEPS_LAUNCH):
        monkeypatch.setattr(f"{name}.apply_async", lambda args=(), _name=name, **options: tasks.append((_name, tuple(args))),
                            raising=False)
    return tasks


def _roots(queue) -> list[int]:
    """The queue's steps that wait on nothing, in position order."""
    return list(QueueRequest.objects.filter(queue=queue, upstream_edges=None).order_by("position").values_list("pk", flat=True))


@pytest.mark.parametrize("name", ["historical-pipeline", "realtime-pipeline"])
def test_a_submitted_queue_has_its_first_steps_launching_and_their_launch_sent(sent, name):
    """Case: what the first advance decides is the advance's own rule — the steps that wait on nothing
    launch, every other step waits; the queue is running, its change acted on, and the commit sends the
    launch (one task for steps ready together), no queue_advance."""
    with state_changes() as changes:
        queue, created = queue_create(payload=payload(name), queue_id=f"submitted-{name}")

    assert created
    roots = _roots(queue)
    assert roots and len(roots) < queue.steps.count()
    states = dict(queue.steps.values_list("pk", "state"))
    assert {pk for pk, state in states.items() if state == StepState.LAUNCHING} == set(roots)
    assert {state for pk, state in states.items() if pk not in roots} == {StepState.WAITING}
    stored = Queue.objects.get(pk=queue.pk)
    assert stored.status == QueueStatus.RUNNING and stored.started_at is not None and stored.changes_pending == 0
    assert (queue.status, queue.started_at) == (stored.status, stored.started_at)  # the caller's copy too
    assert changes == [(pk, StepState.WAITING, StepState.LAUNCHING) for pk in roots]
    launch = (STEPS_LAUNCH, (queue.pk, roots)) if len(roots) > 1 else (STEP_LAUNCH, (roots[0],))
    assert sent == [launch]
    assert advance.queue_advance(queue.pk) == []  # nothing left for a later advance to start


def test_a_submission_writes_the_queue_and_its_first_advance_in_one_transaction(sent):
    """Case: create → ready round trips — the resubmission check, BEGIN, the queue, its steps, its edges,
    the audit entry, ONE UPDATE for the steps it launches (a WITH: what receivers record comes with it),
    ONE UPDATE of the queue, COMMIT: no lock and no read of the steps it holds (a `queue_advance` task
    took BEGIN, the lock, the read, COMMIT more)."""
    with CaptureQueriesContext(connection) as queries:
        queue, _ = queue_create(payload=payload(), queue_id="submitted-trips")

    statements = [q["sql"] for q in queries.captured_queries]
    assert not [sql for sql in statements if "FOR NO KEY UPDATE" in sql or "FOR UPDATE" in sql], statements
    assert not [sql for sql in statements if "FROM queues_queuerequest" in sql.replace('"', "")
                and sql.startswith("SELECT")], statements
    assert [sql.split()[0] for sql in statements] == [
        "SELECT", "BEGIN", "INSERT", "INSERT", "INSERT", "INSERT", "WITH", "UPDATE", "COMMIT"], statements
    assert len(sent) == 1


def test_a_resubmission_advances_nothing_again(sent):
    """Case: the same queue_id and payload again returns the queue as it is, sending nothing."""
    queue, _ = queue_create(payload=payload(), queue_id="submitted-twice")
    sent.clear()
    with state_changes() as changes:
        again, created = queue_create(payload=payload(), queue_id="submitted-twice")
    assert (again.pk, created) == (queue.pk, False)
    assert sent == [] and changes == []
    assert Queue.objects.get(pk=queue.pk).changes_pending == 0


def test_a_submission_whose_first_advance_fails_leaves_nothing(sent, monkeypatch):
    """Case: both or neither — an error in the first advance rolls the submission back (no queue, no
    steps, no accepted audit entry, nothing sent); the same submission made again succeeds."""
    def broken(ready):
        raise RuntimeError("advance broke")

    working = advance._steps_mark_launching
    monkeypatch.setattr("jobs.advance._steps_mark_launching", broken)
    with pytest.raises(RuntimeError, match="advance broke"):
        queue_create(payload=payload(), queue_id="submitted-broken")
    assert not Queue.objects.filter(queue_id="submitted-broken").exists()
    assert not QueueRequest.objects.filter(queue__queue_id="submitted-broken").exists()
    assert not AuditEntry.objects.filter(queue_ref="submitted-broken", result="accepted").exists()
    assert sent == []

    monkeypatch.setattr("jobs.advance._steps_mark_launching", working)
    queue, created = queue_create(payload=payload(), queue_id="submitted-broken")
    assert created and queue.status == QueueStatus.RUNNING
