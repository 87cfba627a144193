"""With the Celery broker down, starting and stopping still work: the periodic reconcile catches up."""
import pytest

from queues.models import Queue, QueueStatus, StepState

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit callbacks fire: tasks are really sent


@pytest.fixture
def broker_down(redis_server):
    if getattr(redis_server, "external", False):
        pytest.skip("needs the Redis these tests started (it is stopped and started again)")
    redis_server.stop()
    yield
    redis_server.restart()


def test_it_starts_and_stops_a_queue_while_the_broker_is_down(api, historical_payload, broker_down):
    response = api.post("/api/queues/", {**historical_payload, "queue_id": "no-broker"}, format="json")
    assert response.status_code == 201, response.content
    queue = Queue.objects.get(queue_id="no-broker")
    # Advanced on submission: its first steps are launching, their launch task lost with the broker
    # (reconcile sends it again once the step has waited LAUNCH_STUCK_SECONDS).
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.WAITING, StepState.LAUNCHING}

    response = api.post("/api/queues/no-broker/stop/")
    assert response.status_code == 202, response.content
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPED  # no launch was claimed: every step is cancelled at once
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}
