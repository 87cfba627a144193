"""Issue #12 launch figures: a launch's record is one statement in autocommit, its outbox row with it.

A launch records its step (launching → pending, the handle) after the Job exists. It used to take four
round trips (BEGIN, UPDATE, the mirror's outbox upsert, COMMIT); it is one data-modifying statement now,
which writes the mirror's outbox row in the same statement, so the two exist together or not at all, and
`step_state_changed` still reaches every receiver (metrics, mirror) once. Counted by captured statements
(Django logs BEGIN and COMMIT too), never timed.
"""
from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from jobs import advance, scheduler
from jobs.announce import STEP_LAUNCH
from jobs.launching import step_launch
from mirror.models import MirrorOutbox
from queues.models import QueueRequest, StepState
from tests.jobs.helpers import on_task, state_changes
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db(transaction=True)


class _Fake:
    name = "fake"

    def launch(self, step_):
        return {"launcher": self.name, "job_name": step_.job_name}


@pytest.fixture
def launching(monkeypatch, settings):
    """A queue's first step, launching (its launch task swallowed), with the fake launcher."""
    monkeypatch.setattr(scheduler, "get_launcher", lambda: _Fake())
    on_task(monkeypatch, STEP_LAUNCH.rsplit(".", 1)[-1], lambda *args: None)
    drains = []
    monkeypatch.setattr("mirror.tasks.enqueue_drain", lambda: drains.append(1))
    queue = make_queue(queue_id="record-one", requests=[{"target": "loader-producer", "type": "api_trades"}])
    advance.queue_advance(queue.pk)
    step = queue.steps.get()
    assert step.state == StepState.LAUNCHING
    MirrorOutbox.objects.all().delete()
    drains.clear()
    return step, drains


@pytest.fixture
def received():
    with state_changes() as got:
        yield got


def test_a_launch_record_with_the_mirror_on_is_one_statement_with_its_outbox_row(launching, received, settings):
    """Case: record = one statement (was BEGIN, UPDATE, outbox upsert, COMMIT) — the claim and the record
    are the launch's only two round trips; the step's outbox row exists after it with the step's key, the
    drain is enqueued, and step_state_changed reached its receivers once."""
    settings.ARANGO_ENABLED = True
    step, drains = launching

    with CaptureQueriesContext(connection) as queries:
        assert step_launch(step.pk) == "launched"

    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 2, statements  # the claim (UPDATE … RETURNING) and the record
    assert not [sql for sql in statements if sql in ("BEGIN", "COMMIT")], statements
    stored = QueueRequest.objects.get(pk=step.pk)
    assert stored.state == StepState.PENDING and stored.launcher_handle["job_name"] == step.job_name
    [row] = MirrorOutbox.objects.filter(kind="step", object_id=step.pk)
    assert row.doc_key == f"{step.queue.queue_id}__{step.name}"
    assert drains == [1]
    assert received == [(step.pk, StepState.LAUNCHING, StepState.PENDING)]


def test_a_launch_record_with_the_mirror_off_is_one_statement(launching, received, settings):
    """Case: record = one statement without the mirror too (was BEGIN, UPDATE, COMMIT); no outbox row."""
    settings.ARANGO_ENABLED = False
    step, _ = launching

    with CaptureQueriesContext(connection) as queries:
        assert step_launch(step.pk) == "launched"

    assert len(queries.captured_queries) == 2, [q["sql"] for q in queries.captured_queries]
    assert QueueRequest.objects.get(pk=step.pk).state == StepState.PENDING
    assert not MirrorOutbox.objects.exists()
    assert received == [(step.pk, StepState.LAUNCHING, StepState.PENDING)]


def test_a_transition_that_changes_nothing_writes_no_outbox_row(launching, received, settings):
    """Case: both or neither — a compare-and-set that matches no row (the step is not waiting) records
    nothing for the mirror and sends no signal."""
    settings.ARANGO_ENABLED = True
    step, _ = launching

    assert step.transition(StepState.PENDING, from_states=[StepState.WAITING]) is False

    assert QueueRequest.objects.get(pk=step.pk).state == StepState.LAUNCHING
    assert not MirrorOutbox.objects.exists()
    assert received == []


def test_an_outbox_row_that_cannot_be_written_leaves_the_step_unchanged(launching, received, settings):
    """Case: both or neither — when the outbox row cannot be written (here a constraint refuses step rows),
    the step's change is not written either and no receiver hears of it."""
    settings.ARANGO_ENABLED = True
    step, _ = launching
    table = MirrorOutbox._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT test_no_step CHECK (kind <> 'step') NOT VALID")
    try:
        with pytest.raises(IntegrityError):
            step.transition(StepState.PENDING, from_states=[StepState.LAUNCHING])
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT test_no_step")

    assert QueueRequest.objects.get(pk=step.pk).state == StepState.LAUNCHING
    assert not MirrorOutbox.objects.exists()
    assert received == []
