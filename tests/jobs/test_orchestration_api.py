"""Orchestration API (api/orchestration.py): telemetry in, retry, per-step stop, events and logs.

DB-level: on_commit callbacks do not fire inside the `db` fixture, so nothing reaches Celery.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from queues.models import Queue, QueueStatus, StepState, TelemetryEvent
from tests.queues.factories import UserFactory, make_queue
from tests.jobs.helpers import put, step_of

pytestmark = pytest.mark.django_db

TOKEN = "telemetry-token-for-these-tests"
LOADER = ("loader-producer", "api_candles_5m")
CONNECTOR = ("arango-connector", "api_candles_5m")


@pytest.fixture(autouse=True)
def telemetry_token(settings):
    # Ingestion tests post for several steps with one client: the legacy shared token does that.
    # Per-step credentials are tested in test_step_credentials.py.
    settings.TELEMETRY_TOKEN = TOKEN
    settings.TELEMETRY_SHARED_TOKEN_ALLOWED = True


@pytest.fixture
def queue():
    return make_queue(queue_id="api-q", first_advance=False)


@pytest.fixture
def worker() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    return client




def _token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def _event(step, status="loading", **fields) -> dict:
    return {"event": status, "queue_id": step.queue.queue_id, "producer": step.telemetry_id, **fields}


# --- POST /api/telemetry/ -----------------------------------------------------------------------


def test_it_accepts_one_event(worker, queue):
    step = put(step_of(queue, LOADER), StepState.PENDING)
    response = worker.post("/api/telemetry/", _event(step, "started"), format="json")
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    step.refresh_from_db()
    assert step.state == StepState.RUNNING


def test_it_accepts_a_batch_in_both_dialects(worker, queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    batch = [
        {"event": "loading", "queue_id": "api-q", "producer": step.telemetry_id, "records_written": 10, "timestamp": 1717200000},
        {"status": "loading", "queue_id": "api-q", "telemetry_id": step.telemetry_id, "message_count": 20,
         "sent_at": "2024-06-01T00:00:05Z", "shard": 7},
    ]  # fmt: skip
    response = worker.post("/api/telemetry/", batch, format="json")
    assert response.status_code == 202 and response.json()["accepted"] == 2
    step.refresh_from_db()
    assert step.records_written == 20
    kept = TelemetryEvent.objects.get(step=step, records_written=20)
    assert kept.payload["shard"] == 7 and kept.source == "http"


def test_it_accepts_a_duplicate_once(worker, queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    event = _event(step, records_written=33, timestamp=5)
    response = worker.post("/api/telemetry/", [event, event], format="json")
    assert response.status_code == 202
    assert response.json()["accepted"] == 1 and response.json()["duplicates"] == 1
    again = worker.post("/api/telemetry/", event, format="json")
    assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    step.refresh_from_db()
    assert step.records_written == 33
    assert TelemetryEvent.objects.count() == 1


def test_it_reports_the_bad_events_of_a_partially_bad_batch(worker, queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    batch = [
        _event(step, records_written=1),
        {"event": "loading", "queue_id": "no-such-queue", "producer": step.telemetry_id},
        _event(step, records_written=2),
        {"event": "loading", "queue_id": "api-q", "producer": "ghost__producer"},
        {"event": "nonsense", "queue_id": "api-q", "producer": step.telemetry_id},
    ]
    response = worker.post("/api/telemetry/", batch, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {1, 3, 4}
    assert "unknown queue" in reasons[1] and "unknown producer" in reasons[3] and "status" in reasons[4]


def test_it_answers_400_when_no_event_is_usable(worker, queue):
    response = worker.post("/api/telemetry/", [{"event": "loading"}, "text"], format="json")
    assert response.status_code == 400
    assert response.json()["accepted"] == 0 and len(response.json()["rejected"]) == 2
    assert TelemetryEvent.objects.count() == 0


def test_it_refuses_more_than_5000_events(worker, queue):
    step = step_of(queue, LOADER)
    batch = [_event(step, records_written=n) for n in range(5001)]
    response = worker.post("/api/telemetry/", batch, format="json")
    assert response.status_code == 400
    assert TelemetryEvent.objects.count() == 0


def test_it_refuses_a_wrong_bearer_token(queue):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-the-token")
    response = client.post("/api/telemetry/", _event(step_of(queue, LOADER)), format="json")
    assert response.status_code == 401
    assert TelemetryEvent.objects.count() == 0


def test_it_refuses_a_bearer_token_when_none_is_configured(settings, queue):
    settings.TELEMETRY_TOKEN = ""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer ")
    assert client.post("/api/telemetry/", _event(step_of(queue, LOADER)), format="json").status_code == 401


def test_it_refuses_anonymous_telemetry(queue):
    response = APIClient().post("/api/telemetry/", _event(step_of(queue, LOADER)), format="json")
    assert response.status_code in (401, 403)
    assert TelemetryEvent.objects.count() == 0


def test_it_needs_the_add_telemetryevent_permission_for_users(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    operator = UserFactory(username="op", perms=["view_queue", "start_queue", "stop_queue"])
    assert _token_client(operator).post("/api/telemetry/", _event(step), format="json").status_code == 403
    reporter = UserFactory(username="reporter", perms=["add_telemetryevent"])
    assert _token_client(reporter).post("/api/telemetry/", _event(step), format="json").status_code == 202


def test_it_gives_the_worker_principal_nothing_but_telemetry(worker, queue):
    assert worker.get("/api/queues/").status_code in (401, 403)
    assert worker.get("/api/queues/api-q/").status_code in (401, 403)
    assert worker.post("/api/queues/api-q/stop/").status_code in (401, 403)
    queue.refresh_from_db()
    assert queue.stop_requested_at is None


# --- POST /api/queues/{id}/retry/ ---------------------------------------------------------------


def _failed_queue(queue) -> Queue:
    put(step_of(queue, LOADER), StepState.FAILED, message="boom", finished_at=timezone.now())
    put(step_of(queue, CONNECTOR), StepState.STOPPED, message="Cancelled: x", finished_at=timezone.now())
    Queue.objects.filter(pk=queue.pk).update(status=QueueStatus.FAILED, message="Step failed")
    queue.refresh_from_db()
    return queue


def test_it_retries_the_failed_and_stopped_steps(api, queue):
    _failed_queue(queue)
    response = api.post("/api/queues/api-q/retry/")
    assert response.status_code == 202
    assert response.json() == {"retried": 2}
    assert step_of(queue, LOADER).state == StepState.WAITING
    queue.refresh_from_db()
    assert queue.status == QueueStatus.PENDING and queue.message == ""


def test_it_answers_409_when_there_is_nothing_to_retry(api, queue):
    response = api.post("/api/queues/api-q/retry/")
    assert response.status_code == 409
    assert response.json()["retried"] == 0


def test_it_answers_404_when_retrying_an_unknown_queue(api):
    assert api.post("/api/queues/nope/retry/").status_code == 404


@pytest.mark.parametrize("perms", [["view_queue"], ["view_queue", "stop_queue"], ["view_queue", "start_queue"]])
def test_it_needs_start_and_stop_permission_to_retry(queue, perms):
    _failed_queue(queue)
    response = _token_client(UserFactory(username="half", perms=perms)).post("/api/queues/api-q/retry/")
    assert response.status_code == 403
    assert step_of(queue, LOADER).state == StepState.FAILED


# --- POST /api/queues/{id}/steps/{name}/stop/ ---------------------------------------------------


def test_it_stops_one_step_idempotently(api, queue):
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING, started_at=timezone.now())
    first = api.post(f"/api/queues/api-q/steps/{step.name}/stop/")
    assert first.status_code == 202
    assert first.json()["name"] == step.name and first.json()["state"] == StepState.STOPPING
    step.refresh_from_db()
    requested = step.stop_requested_at
    assert requested is not None and "operator" in step.message
    again = api.post(f"/api/queues/api-q/steps/{step.name}/stop/")
    assert again.status_code == 202 and again.json()["state"] == StepState.STOPPING
    step.refresh_from_db()
    assert step.stop_requested_at == requested
    assert step_of(queue, LOADER).state == StepState.WAITING  # only that step


def test_it_cancels_a_waiting_step_on_stop(api, queue):
    step = step_of(queue, LOADER)
    response = api.post(f"/api/queues/api-q/steps/{step.name}/stop/")
    assert response.status_code == 202 and response.json()["state"] == StepState.STOPPED


def test_it_answers_404_for_an_unknown_step(api, queue):
    assert api.post("/api/queues/api-q/steps/no-such-step/stop/").status_code == 404
    assert api.post("/api/queues/nope/steps/x/stop/").status_code == 404


def test_it_refuses_a_step_stop_to_a_viewer(queue, viewer):
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING)
    response = _token_client(viewer).post(f"/api/queues/api-q/steps/{step.name}/stop/")
    assert response.status_code == 403
    step.refresh_from_db()
    assert step.state == StepState.RUNNING and step.stop_requested_at is None


# --- GET /api/queues/{id}/events/ ---------------------------------------------------------------


def _events(queue):
    loader, connector = step_of(queue, LOADER), step_of(queue, CONNECTOR)
    base = timezone.now() - timedelta(minutes=10)
    rows = [(loader, "started"), (loader, "loading"), (connector, "started"), (loader, "finished"), (connector, "loading")]
    for n, (step, status) in enumerate(rows):
        TelemetryEvent.objects.create(
            queue=queue, step=step, event_key=f"k{n}", status=status, producer=step.telemetry_id,
            payload={"n": n}, received_at=base + timedelta(seconds=n),
        )  # fmt: skip
    return loader, connector


def test_it_lists_events_newest_first_paginated(viewer, queue, monkeypatch):
    monkeypatch.setattr("rest_framework.pagination.PageNumberPagination.page_size", 2)
    _events(queue)
    client = _token_client(viewer)
    page1 = client.get("/api/queues/api-q/events/").json()
    assert page1["count"] == 5 and page1["next"]
    assert [e["payload"]["n"] for e in page1["results"]] == [4, 3]
    page3 = client.get("/api/queues/api-q/events/", {"page": 3}).json()
    assert [e["payload"]["n"] for e in page3["results"]] == [0]
    assert page1["results"][0]["step"] == step_of(queue, CONNECTOR).name


def test_it_filters_events_by_step_and_status(api, queue):
    loader, connector = _events(queue)
    by_step = api.get("/api/queues/api-q/events/", {"step": loader.name}).json()
    assert [e["status"] for e in by_step["results"]] == ["finished", "loading", "started"]
    by_status = api.get("/api/queues/api-q/events/", {"status": "started"}).json()
    assert {e["step"] for e in by_status["results"]} == {loader.name, connector.name}
    both = api.get("/api/queues/api-q/events/", {"step": connector.name, "status": "loading"}).json()
    assert both["count"] == 1


def test_it_shows_only_this_queues_events(api, queue):
    _events(queue)
    make_queue(queue_id="other-q")
    assert api.get("/api/queues/other-q/events/").json()["count"] == 0
    assert api.get("/api/queues/nope/events/").status_code == 404


def test_it_refuses_events_to_anonymous_users(queue):
    _events(queue)
    response = APIClient().get("/api/queues/api-q/events/")
    assert response.status_code in (401, 403) and b"started" not in response.content


# --- GET /api/queues/{id}/steps/{name}/logs/ ----------------------------------------------------


def test_it_returns_the_stored_logs_of_an_ended_step(viewer, queue):
    step = put(step_of(queue, LOADER), StepState.SUCCEEDED, logs="first line\nlast line\n",
                launched_at=timezone.now(), finished_at=timezone.now())  # fmt: skip
    client = _token_client(viewer)
    body = client.get(f"/api/queues/api-q/steps/{step.name}/logs/").json()
    assert body == {"step": step.name, "state": StepState.SUCCEEDED, "live": False, "logs": "first line\nlast line\n"}
    tail = client.get(f"/api/queues/api-q/steps/{step.name}/logs/", {"tail_bytes": 10}).json()
    assert tail["logs"] == "last line\n"


def test_it_validates_tail_bytes(api, queue):
    step = put(step_of(queue, LOADER), StepState.FAILED, logs="x")
    response = api.get(f"/api/queues/api-q/steps/{step.name}/logs/", {"tail_bytes": "lots"})
    assert response.status_code == 400 and "tail_bytes" in response.json()


def test_it_answers_404_for_the_logs_of_an_unknown_step(api, queue):
    assert api.get("/api/queues/api-q/steps/ghost/logs/").status_code == 404


# --- issue #10 §1: a bad telemetry body is a 400 naming the field, never a 500 ----------------------


@pytest.fixture
def reporter() -> APIClient:
    """A user allowed to post telemetry for any step (whatever credential workers use)."""
    return _token_client(UserFactory(username="telemetry-reporter", perms=["add_telemetryevent"]))


@pytest.mark.parametrize(
    "body, named",
    [
        ('{{"event":"loading","queue_id":"api-q","producer":"{producer}","records_written":1e400}}', "records_written"),
        ('{{"event":"loading","queue_id":"api-q","producer":"{producer}","timestamp":"2024-06-31T00:00:00"}}', "timestamp"),
        ('{{"event":"loading","queue_id":"api-q","producer":"{producer}","extra":[1]}}', "extra"),
        ('{{"event":"loading","queue_id":"api-q","producer":"{producer}","records_written":99999999999999999999}}',
         "records_written"),
    ],
)
def test_it_answers_400_naming_the_field_of_a_malformed_event(reporter, queue, body, named):
    """Issue #10 §1 over HTTP: the body of the live try (records_written 1e400) and its class are a 400."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    response = reporter.post("/api/telemetry/", body.format(producer=step.telemetry_id), content_type="application/json")
    assert response.status_code == 400, response.content
    assert named in response.json()["rejected"][0]["reason"]
    assert TelemetryEvent.objects.count() == 0


def test_it_answers_400_to_a_body_nested_too_deeply_to_parse(reporter, queue):
    """Issue #10 §1 (deep nesting) over HTTP: JSON the parser cannot even read is a 400, not a 500."""
    response = reporter.post("/api/telemetry/", "[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert response.status_code == 400
