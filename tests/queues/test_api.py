"""The REST API: create (idempotent), list with filters and pagination, retrieve, stop, steps, catalogue, templates, legacy routes."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from queues.models import Queue, QueueStatus, StepState
from tests.queues.factories import make_queue, payload

pytestmark = pytest.mark.django_db


def test_it_returns_the_existing_queue_for_an_identical_resubmission(api):
    data = payload("historical-pipeline", queue_id="client-run-1")
    first = api.post("/api/queues/", data, format="json")
    again = api.post("/api/queues/", data, format="json")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["queue_id"] == first.json()["queue_id"] == "client-run-1"
    assert again.json()["steps"] == first.json()["steps"]
    assert Queue.objects.count() == 1


def test_it_refuses_another_payload_under_an_existing_queue_id(api):
    api.post("/api/queues/", payload("historical-pipeline", queue_id="client-run-2"), format="json")
    response = api.post("/api/queues/", payload("realtime-pipeline", queue_id="client-run-2"), format="json")
    assert response.status_code == 409
    body = response.json()
    assert body["queue_id"] == "client-run-2" and "different payload" in body["detail"]
    assert Queue.objects.get().symbol == "BTCUSDT" and Queue.objects.get().steps.count() == 6


def test_it_creates_distinct_queues_without_a_client_queue_id(api):
    a = api.post("/api/queues/", payload(), format="json").json()
    b = api.post("/api/queues/", payload(), format="json").json()
    assert a["queue_id"] != b["queue_id"]


def test_it_retrieves_a_queue_with_steps_and_edges(api):
    queue = make_queue(queue_id="get-me")
    response = api.get("/api/queues/get-me/")
    assert response.status_code == 200
    body = response.json()
    assert body["queue_id"] == queue.queue_id and body["time_range"] == "2024-06-01:2024-06-30"
    assert body["progress"] == {"done": 0, "total": 6}
    step = body["steps"][0]
    for key in ("name", "target", "type", "job_name", "telemetry_id", "kafka_topic", "collections_read",
                "collections_written", "state", "records_written", "message"):
        assert key in step
    assert {"upstream", "downstream", "kind", "reason"} <= set(body["edges"][0])


def test_it_answers_404_as_json_for_an_unknown_queue(api):
    response = api.get("/api/queues/no-such-queue/")
    assert response.status_code == 404
    assert "detail" in response.json()
    assert api.post("/api/queues/no-such-queue/stop/").status_code == 404
    assert api.get("/api/queues/no-such-queue/steps/").status_code == 404


def test_it_lists_newest_first_with_progress(api, operator):
    old = make_queue(queue_id="old-one", user=operator)
    Queue.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    new = make_queue("realtime-pipeline", queue_id="new-one")
    new.steps.filter(position__in=[0, 1]).update(state=StepState.SUCCEEDED)
    body = api.get("/api/queues/").json()
    assert body["count"] == 2
    assert [q["queue_id"] for q in body["results"]] == ["new-one", "old-one"]
    assert body["results"][0]["progress"] == {"done": 2, "total": 7}
    assert body["results"][1]["submitted_by"] == "operator"
    assert "steps" not in body["results"][0]


def test_it_filters_the_list(api):
    hist = make_queue(queue_id="hist")
    make_queue("realtime-pipeline", queue_id="rt")
    make_queue("realtime-pipeline", queue_id="eth", symbol="ETHUSDT")
    Queue.objects.filter(pk=hist.pk).update(status=QueueStatus.FAILED, created_at=timezone.now() - timedelta(days=10))

    def ids(query):
        response = api.get("/api/queues/", query)
        assert response.status_code == 200, response.content
        return sorted(q["queue_id"] for q in response.json()["results"])

    assert ids({"status": "failed"}) == ["hist"]
    assert ids({"status": "pending"}) == ["eth", "rt"]
    assert ids({"symbol": "ethusdt"}) == ["eth"]
    assert ids({"target": "visualizer"}) == ["eth", "rt"]
    assert ids({"target": "loader-producer"}) == ["eth", "hist", "rt"]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids({"created_after": since}) == ["eth", "rt"]
    assert ids({"created_before": since}) == ["hist"]


def test_it_keeps_step_counts_right_when_filtering_by_target(api):
    make_queue(queue_id="counted")
    (row,) = api.get("/api/queues/", {"target": "loader-producer"}).json()["results"]
    assert row["progress"]["total"] == 6


@pytest.mark.parametrize("query", [{"status": "nope"}, {"target": "nope"}, {"created_after": "yesterday"}])
def test_it_rejects_bad_filter_values_with_400(api, query):
    response = api.get("/api/queues/", query)
    assert response.status_code == 400
    assert set(query) <= set(response.json())


def test_it_paginates(api, monkeypatch):
    from rest_framework.pagination import PageNumberPagination

    for n in range(3):
        make_queue("realtime-pipeline", queue_id=f"page-{n}")
    first = api.get("/api/queues/").json()
    assert first["count"] == 3 and first["next"] is None
    monkeypatch.setattr(PageNumberPagination, "page_size", 2)  # API_PAGE_SIZE is read once at start-up
    page1 = api.get("/api/queues/").json()
    page2 = api.get("/api/queues/", {"page": 2}).json()
    assert len(page1["results"]) == 2 and page1["next"]
    assert len(page2["results"]) == 1 and page2["previous"]
    assert api.get("/api/queues/", {"page": 99}).status_code == 404


def test_it_stops_a_queue_idempotently(api):
    queue = make_queue(queue_id="stop-me")
    first = api.post("/api/queues/stop-me/stop/")
    assert first.status_code == 202
    assert first.json()["status"] == QueueStatus.STOPPED
    assert {s["state"] for s in first.json()["steps"]} == {StepState.STOPPED}
    again = api.post("/api/queues/stop-me/stop/")
    assert again.status_code == 202 and again.json()["status"] == QueueStatus.STOPPED
    queue.refresh_from_db()
    assert queue.stop_requested_at is not None


def test_it_lists_the_steps_of_a_queue(api):
    make_queue(queue_id="with-steps")
    response = api.get("/api/queues/with-steps/steps/")
    assert response.status_code == 200
    steps = response.json()
    assert [s["number"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[4]["depends_on"] == ["arango-connector-api-candles-5m", "arango-connector-api-trades"]


def test_it_serves_the_catalogue(api):
    body = api.get("/api/catalogue/").json()
    assert set(body["targets"]) == {"loader-producer", "arango-connector", "graph-builder", "gnn-trainer", "visualizer"}
    assert "collection_output" in body["targets"]["graph-builder"]["required"]


def test_it_serves_the_payload_templates(api):
    listed = api.get("/api/templates/").json()
    assert [t["name"] for t in listed] == ["historical-pipeline", "realtime-pipeline"]
    one = api.get("/api/templates/realtime-pipeline/").json()
    assert one["payload"] == payload("realtime-pipeline")
    assert api.get("/api/templates/nope/").status_code == 404


def test_it_keeps_the_legacy_routes(api):
    created = api.post("/queues/start-pipeline", payload(queue_id="legacy-1"), format="json")
    assert created.status_code == 201 and created.json()["queue_id"] == "legacy-1"
    listed = api.get("/queues/list").json()
    assert [q["queue_id"] for q in listed["results"]] == ["legacy-1"]
    stopped = api.post("/queues/stop", {"queue_id": "legacy-1"}, format="json")
    assert stopped.status_code == 202 and stopped.json()["status"] == QueueStatus.STOPPED
    assert api.post("/queues/stop", {}, format="json").status_code == 400
    assert api.post("/queues/stop", {"queue_id": "missing"}, format="json").status_code == 404
    bad = api.post("/queues/start-pipeline", payload(symbol="??"), format="json")
    assert bad.status_code == 400 and "symbol" in bad.json()


@pytest.mark.parametrize(
    "query, expected",
    [
        ("created_after=9999-12-31T23:59:59-23:00", 400),  # past year 9999 in UTC: an OverflowError
        ("created_before=0001-01-01T00:00:00%2B23:00", 400),  # before year 1 in UTC
        ("created_after=9476-01-01T00:11:32.82%2B20:54", 200),  # an offset PostgreSQL refuses (> 15:59)
    ],
)
def test_it_answers_date_times_at_the_edges_without_a_500(api, query, expected):
    """Issue #10 §4 (fuzzing): a date-time overflowing once in UTC, or with an offset PostgreSQL refuses, was a 500."""
    for url in ("/api/queues/", "/queues/list"):
        response = api.get(f"{url}?{query}")
        assert response.status_code == expected, (url, response.status_code)
        if expected == 400:
            assert query.split("=")[0] in response.json()


@pytest.mark.parametrize("param", ["step", "status"])
def test_it_refuses_a_nul_character_in_the_event_filters_with_a_400(api, param):
    """Issue #10 §4 (fuzzing): NUL in `?step=`/`?status=` of the events list reached PostgreSQL, a 500."""
    make_queue(queue_id="nul-q")
    response = api.get(f"/api/queues/nul-q/events/?{param}=a%00b")
    assert response.status_code == 400
    assert param in response.json()


@pytest.mark.parametrize("queue_id", ["a\x00b", "abc\n", "x" * 300])
def test_it_refuses_a_malformed_queue_id_in_the_legacy_stop_with_a_400(api, queue_id):
    """Issue #10 §4 (fuzzing): a NUL in the legacy stop's `queue_id` reached PostgreSQL, a 500."""
    make_queue(queue_id="abc")
    response = api.post("/queues/stop", {"queue_id": queue_id}, format="json")
    assert response.status_code == 400
    assert "queue_id" in response.json()
    assert Queue.objects.get(queue_id="abc").stop_requested_at is None
