"""ArangoDB down in the middle of a pipeline: the control plane works, the backlog shows, nothing is lost."""
import pytest

from mirror import status as mirror_status
from mirror.arango import MirrorUnavailable
from mirror.models import MirrorOutbox, MirrorState
from mirror.sync import mirror_drain
from mirror.tasks import mirror_drain_task
from queues.models import QueueRequest, StepState, TelemetryEvent
from jobs.services import queue_refresh_status
from tests.queues.factories import make_queue

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def advance(queue, to, from_states):
    for step in queue.steps.all():
        assert step.transition(to, from_states=from_states)
    queue_refresh_status(queue=queue)


def test_it_loses_nothing_when_arango_goes_down_mid_pipeline(mirror, historical_payload):
    queue = make_queue(queue_id="hist-outage", first_advance=False)  # this test advances it
    advance(queue, StepState.LAUNCHING, [StepState.WAITING])
    mirror_drain()
    assert mirror.docs("queues")["hist-outage"]["status"] == "running"

    mirror.go_down()
    # The control plane keeps working while ArangoDB is unreachable.
    advance(queue, StepState.RUNNING, [StepState.LAUNCHING])
    for step in queue.steps.all():
        QueueRequest.objects.filter(pk=step.pk).update(records_written=1000)
        TelemetryEvent.objects.create(queue=queue, step=step, event_key=f"outage-{step.pk}", status="finished",
                                      producer=step.telemetry_id, records_written=1000, payload={"n": step.pk})
    advance(queue, StepState.SUCCEEDED, [StepState.RUNNING])

    with pytest.raises(MirrorUnavailable):
        mirror_drain()
    status = mirror_status()
    assert status["enabled"] and status["backlog"] == 1 + 6 + 6  # queue, steps, events
    assert status["oldest_pending_age_seconds"] >= 0 and status["oldest_pending_at"] is not None
    assert "unavailable" in status["last_error"]
    assert MirrorOutbox.objects.filter(claimed_until__isnull=False).count() == 0  # released for the retry

    mirror.come_back()
    mirror_drain()
    assert mirror_status()["backlog"] == 0
    docs = assert_mirror_matches_postgres(mirror)
    assert docs["queues"]["hist-outage"]["status"] == "succeeded"
    assert {d["records_written"] for d in docs["steps"].values()} == {1000}
    assert MirrorState.get().last_success_at > MirrorState.get().last_error_at


def test_it_retries_the_task_with_backoff_while_arango_is_down(mirror):
    make_queue(first_advance=False)  # one change pending: the queue
    mirror.go_down()
    with pytest.raises(MirrorUnavailable):
        mirror_drain_task.run()
    assert mirror_drain_task.autoretry_for == (MirrorUnavailable,)
    assert mirror_drain_task.retry_backoff and mirror_drain_task.retry_backoff_max == 300
    assert MirrorOutbox.objects.count() == 1
    mirror.come_back()
    assert mirror_drain_task.run()["synced"] == 1
    assert_mirror_matches_postgres(mirror)
