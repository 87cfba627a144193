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
    assert body["next"] is None and body["previous"] is None
    assert [q["queue_id"] for q in body["results"]] == ["new-one", "old-one"]
    assert body["results"][0]["progress"] == {"done": 2, "total": 7}
    assert body["results"][1]["submitted_by"] == "operator"
    assert "steps" not in body["results"][0]


def test_it_filters_the_list(api):
    hist = make_queue(queue_id="hist", first_advance=False)
    make_queue("realtime-pipeline", queue_id="rt", first_advance=False)
    make_queue("realtime-pipeline", queue_id="eth", symbol="ETHUSDT", first_advance=False)
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


def _queues(n: int, prefix: str = "page") -> list[str]:
    """n queues, newest first as the list shows them (distinct created_at, one second apart)."""
    now = timezone.now()
    for i in range(n):
        queue = make_queue("realtime-pipeline", queue_id=f"{prefix}-{i}")
        Queue.objects.filter(pk=queue.pk).update(created_at=now - timedelta(seconds=n - i))
    return [f"{prefix}-{i}" for i in reversed(range(n))]


def _walk(api, url: str, query: dict | None = None, on_page=None) -> list[str]:
    seen, response = [], api.get(url, query or {})
    while True:
        assert response.status_code == 200, response.content
        body = response.json()
        seen += [q["queue_id"] for q in body["results"]]
        if on_page:
            on_page()
        if not body["next"]:
            return seen
        response = api.get(body["next"])


def test_it_paginates_by_cursor_by_default(api):
    """Issue #12 (deep pages by cursor): the default form follows `next` cursors, with no count(*)."""
    expected = _queues(5)
    first = api.get("/api/queues/", {"page_size": 2}).json()
    assert "count" not in first and "cursor=" in first["next"] and first["previous"] is None
    assert [q["queue_id"] for q in first["results"]] == expected[:2]
    assert _walk(api, "/api/queues/", {"page_size": 2}) == expected
    back = api.get(api.get(first["next"]).json()["previous"]).json()
    assert [q["queue_id"] for q in back["results"]] == expected[:2]


def test_it_walks_every_row_once_by_cursor_while_queues_are_added(api):
    """Issue #12 (deep pages by cursor): rows inserted during the walk neither repeat nor push rows out."""
    expected = _queues(7, "walk")
    added = iter(range(100))

    def add_one():
        make_queue("realtime-pipeline", queue_id=f"added-{next(added)}")

    seen = _walk(api, "/api/queues/", {"page_size": 2}, on_page=add_one)
    assert seen == expected  # every row that existed, once, in order; the new ones are ahead of the cursor
    assert len(_walk(api, "/api/queues/", {"page_size": 3})) == len(expected) + Queue.objects.filter(
        queue_id__startswith="added-").count()


def test_it_keeps_the_page_number_form_for_existing_clients(api):
    """Issue #12 (keep the page-number form working): `?page=N` answers with count and page links."""
    expected = _queues(5)
    page1 = api.get("/api/queues/", {"page": 1, "page_size": 2}).json()
    assert page1["count"] == 5 and "page=2" in page1["next"] and page1["previous"] is None
    assert [q["queue_id"] for q in page1["results"]] == expected[:2]
    page3 = api.get("/api/queues/", {"page": 3, "page_size": 2}).json()
    assert [q["queue_id"] for q in page3["results"]] == expected[4:] and page3["next"] is None
    assert page3["previous"]
    assert api.get("/api/queues/", {"page": 99}).status_code == 404
    legacy = api.get("/queues/list", {"page": 2, "page_size": 2}).json()
    assert legacy["count"] == 5 and [q["queue_id"] for q in legacy["results"]] == expected[2:4]


def test_it_honours_page_size_up_to_the_maximum(api, settings):
    """Issue #12 (`page_size` honoured, with a maximum): ?page_size= was ignored."""
    settings.API_MAX_PAGE_SIZE = 3
    _queues(5)
    assert len(api.get("/api/queues/", {"page_size": 2}).json()["results"]) == 2
    assert len(api.get("/api/queues/", {"page_size": 1000}).json()["results"]) == 3
    assert len(api.get("/api/queues/", {"page": 1, "page_size": 1000}).json()["results"]) == 3
    assert len(api.get("/queues/list", {"page_size": 1000}).json()["results"]) == 3


def test_it_shows_exact_progress_on_every_page_and_filter(api):
    """Issue #12 (progress and counts stay exact): counted per page now, not by a join over all steps."""
    expected = _queues(4, "prog")
    done = {queue_id: n for n, queue_id in enumerate(expected)}  # 0..3 steps succeeded
    for queue_id, n in done.items():
        steps = Queue.objects.get(queue_id=queue_id).steps.order_by("position")
        steps.filter(pk__in=list(steps.values_list("pk", flat=True)[:n])).update(state=StepState.SUCCEEDED)
    Queue.objects.filter(queue_id="prog-0").update(status=QueueStatus.FAILED)
    for query in ({"page_size": 3}, {"page": 2, "page_size": 3}, {"target": "visualizer"}, {"status": "failed"}):
        rows = api.get("/api/queues/", query).json()["results"]
        assert rows, query
        for row in rows:
            assert row["progress"] == {"done": done[row["queue_id"]], "total": 7}, query
    (legacy,) = api.get("/queues/list", {"status": "failed"}).json()["results"]
    assert legacy["progress"] == {"done": done["prog-0"], "total": 7}


def _list_queries(api, query: dict) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert api.get("/api/queues/", query).status_code == 200
    return [q["sql"] for q in captured.captured_queries]


def test_it_lists_with_queries_independent_of_page_size_and_history(api):
    """Issue #12 (query count independent of page size and of the table size; the step count is
    not a join over every step before LIMIT)."""
    _queues(10, "few")
    small = _list_queries(api, {"page_size": 5})
    _queues(50, "more")
    for query in ({"page_size": 5}, {"page_size": 60}, {"page": 2, "page_size": 20}, {"status": "pending"}):
        assert len(_list_queries(api, query)) <= len(small) + (1 if "page" in query else 0), query
    for sql in _list_queries(api, {"page_size": 60}):
        if '"queues_queuerequest"' in sql:
            # The progress is counted per row of the page (a correlated count in the page query), never
            # by joining or grouping the history's steps before LIMIT.
            assert "LIMIT" in sql and "GROUP BY" not in sql and 'JOIN "queues_queuerequest"' not in sql, sql


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
