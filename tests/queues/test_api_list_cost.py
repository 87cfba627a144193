"""The API's queue list and its filtered pages at production scale (issue #12): one round trip for the
page and its progress, the same JSON as DRF's generic serialization, exact progress under every filter.

Milliseconds belong in `make bench` (`api_list_*`); these tests pin the behaviour that keeps them flat.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from api.serializers import QueueSerializer
from queues.models import Queue, QueueRequest, QueueStatus, StepState
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

FILTERS = ({}, {"status": "running"}, {"symbol": "ethusdt"}, {"target": "gnn-trainer"},
           {"status": ["running", "failed"], "target": "arango-connector"})


def _history(n: int, prefix: str) -> None:
    now = timezone.now()
    for i in range(n):
        queue = make_queue("historical-pipeline" if i % 2 else "realtime-pipeline", queue_id=f"{prefix}-{i}",
                           **({"symbol": "ETHUSDT"} if i % 3 == 0 else {}))
        Queue.objects.filter(pk=queue.pk).update(
            created_at=now - timedelta(seconds=1000 - i),
            status=QueueStatus.RUNNING if i % 2 else QueueStatus.FAILED,
        )
        succeeded = list(queue.steps.order_by("position").values_list("pk", flat=True)[: i % 4])
        QueueRequest.objects.filter(pk__in=succeeded).update(state=StepState.SUCCEEDED)


def _queries(api, query: dict) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = api.get("/api/queues/", query)
    assert response.status_code == 200, response.content
    return [q["sql"] for q in captured.captured_queries]


def test_it_reads_a_filtered_page_and_its_progress_in_one_query(api):
    """Issue #12 (filtered pages p95 <= 20 ms and <= 2x bare): each page read its queues, then their
    step counts in a second round trip. Now the progress is counted in the page query (one correlated
    count per row, never a join or GROUP BY over the history's steps), whatever the filter."""
    _history(6, "one")
    for query in FILTERS:
        page = [sql for sql in _queries(api, query) if '"queues_queue"' in sql or '"queues_queuerequest"' in sql]
        assert len(page) == 1, (query, page)
        (sql,) = page
        assert "LIMIT" in sql and "GROUP BY" not in sql and 'JOIN "queues_queuerequest"' not in sql, sql


def test_it_lists_every_filter_in_queries_independent_of_page_size_and_history(api):
    """Issue #12 (query count independent of page size and of the table size), for each filtered page."""
    _history(4, "small")
    _queries(api, {})  # the user's permissions are read once per client, on its first request
    before = {str(query): len(_queries(api, {**query, "page_size": 2})) for query in FILTERS}
    _history(24, "large")
    for query in FILTERS:
        for size in (2, 50):
            assert len(_queries(api, {**query, "page_size": size})) == before[str(query)], (query, size)


def test_it_answers_the_same_rows_as_drfs_own_serialization(api):
    """Issue #12: the list's rows are serialized with the fields resolved once per page; every value
    (dates, user, progress, warnings) stays what DRF's generic per-row serialization gives."""
    _history(7, "same")
    Queue.objects.filter(queue_id="same-3").update(warnings=["a <warning>"], message="m",
                                                   stop_requested_at=timezone.now())
    for query in FILTERS:
        rows = api.get("/api/queues/", query).json()["results"]
        assert rows, query
        by_id = {queue.queue_id: queue for queue in Queue.objects.filter(queue_id__in=[r["queue_id"] for r in rows])}
        # One queue at a time: the plain Serializer path, progress counted from the queue's own steps.
        assert rows == [dict(QueueSerializer(by_id[row["queue_id"]]).data) for row in rows], query


def test_it_keeps_progress_exact_under_every_filter(api):
    """Issue #12 (progress and counts stay exact): each row's done/total are its own steps'."""
    _history(8, "exact")
    for query in FILTERS:
        for row in api.get("/api/queues/", {**query, "page_size": 3}).json()["results"]:
            steps = QueueRequest.objects.filter(queue__queue_id=row["queue_id"])
            expected = {"done": steps.filter(state=StepState.SUCCEEDED).count(), "total": steps.count()}
            assert row["progress"] == expected, (query, row["queue_id"])


def test_it_never_counts_the_steps_of_rows_a_numbered_page_skips(api):
    """Issue #12 (`?page=N` kept for existing clients): with OFFSET, PostgreSQL evaluates the row's
    expressions for every skipped row, so a deep numbered page must not count progress for the rows it
    skips (the skip is an ids-only subquery); its rows' progress is counted for the page's queues only,
    and stays exact."""
    _history(5, "deep")
    for url in ("/api/queues/", "/queues/list"):
        with CaptureQueriesContext(connection) as captured:
            response = api.get(url, {"page": 2, "page_size": 2})
        assert response.status_code == 200
        for sql in (q["sql"] for q in captured.captured_queries):
            if "OFFSET" in sql:  # the skip reads ids only (the page's own rows count their progress)
                assert '"queues_queuerequest"' not in _offset_subquery(sql).split("WHERE")[0], (url, sql)
        for row in response.json()["results"]:
            steps = QueueRequest.objects.filter(queue__queue_id=row["queue_id"])
            assert row["progress"] == {"done": steps.filter(state=StepState.SUCCEEDED).count(), "total": steps.count()}


def _offset_subquery(sql: str) -> str:
    """The innermost parenthesised subquery that holds the OFFSET (the whole statement when none does)."""
    offset = sql.index("OFFSET")
    start = sql.rfind("(SELECT", 0, offset)
    while start >= 0:
        depth = 0
        for end in range(start, len(sql)):
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        if end > offset:
            return sql[start:end + 1]
        start = sql.rfind("(SELECT", 0, start)
    return sql


def test_a_numbered_page_skips_rows_by_their_ids_and_counts_the_page_in_its_own_query(api):
    """Issue #12 (`api_list_page_1000`: deep numbered pages 2.6x bare, 5 queries): the OFFSET walked
    whole rows joined to their users and the progress took another round trip. Now the skip reads only
    the ids (the list-order index) and one query reads the page's rows with their progress: a count
    and the page, whatever the depth; the same rows, in the same order, as the plain OFFSET."""
    _history(9, "seek")
    for url in ("/api/queues/", "/queues/list"):
        for query in FILTERS:
            expected_ids = list(Queue.objects.listed().filter(queue_id__in=[
                r["queue_id"] for r in api.get(url, {**query, "page_size": 500}).json()["results"]
            ]).values_list("queue_id", flat=True))
            for page in (1, 2, 3):
                with CaptureQueriesContext(connection) as captured:
                    response = api.get(url, {**query, "page": page, "page_size": 2})
                if page > 1 and len(expected_ids) <= 2 * (page - 1):
                    assert response.status_code == 404
                    continue
                assert response.status_code == 200, (url, query, page, response.content)
                body = response.json()
                assert body["count"] == len(expected_ids)
                assert [r["queue_id"] for r in body["results"]] == expected_ids[2 * (page - 1):2 * page]
                sqls = [q["sql"] for q in captured.captured_queries
                        if '"queues_queue"' in q["sql"] or '"queues_queuerequest"' in q["sql"]]
                assert len(sqls) == 2, (url, query, page, sqls)  # the count, the page with its progress
                for sql in sqls:
                    if "OFFSET" in sql:
                        skip = _offset_subquery(sql)
                        assert skip != sql and '"queues_queuerequest"' not in skip.split("WHERE")[0], skip
                        assert '"auth_user"' not in skip and "payload" not in skip, skip


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_every_field_of_a_list_row_is_what_drf_renders_for_it(api, zone):
    """Issue #12 (DRF per-row cost): the list formats its date-times without DRF's per-value time-zone
    conversion when the answer is the same string; each field, in order, stays exactly DRF's own
    rendering (whole and fractional seconds, missing values, a non-UTC current time zone)."""
    _history(4, "fields")
    moment = timezone.now().replace(microsecond=0)
    Queue.objects.filter(queue_id="fields-1").update(started_at=moment, finished_at=moment + timedelta(microseconds=7),
                                                    stop_requested_at=None)
    Queue.objects.filter(queue_id="fields-2").update(stop_requested_at=moment, warnings=["w"], message="ü")
    with timezone.override(zone):
        for query in ({}, {"page": 1}):
            response = api.get("/api/queues/", query)
            rows = json.loads(response.content)["results"]
            by_id = {q.queue_id: q for q in Queue.objects.filter(queue_id__in=[r["queue_id"] for r in rows])}
            for row in rows:
                expected = json.loads(JSONRenderer().render(QueueSerializer(by_id[row["queue_id"]]).data))
                assert list(row.items()) == list(expected.items()), (zone, query)


def test_the_filter_form_shared_by_requests_keeps_no_state_between_them(api):
    """Issue #12 (filtered pages: the filter form's class was built per request): the filters and their
    form fields, made once per process, serve every request; an invalid value is still refused, and
    refusing it leaves the next request unaffected."""
    _history(3, "form")
    for _ in range(2):
        bad = api.get("/api/queues/", {"status": "nope", "created_after": "x"})
        assert bad.status_code == 400 and set(bad.json()) >= {"status", "created_after"}, bad.content
        good = api.get("/api/queues/", {"status": "running", "symbol": "BTCUSDT"})
        assert good.status_code == 200
        assert {row["status"] for row in good.json()["results"]} <= {"running"}


def _selected_columns(sql: str, table: str) -> set[str]:
    """The columns of `table` the statement's outermost SELECT list reads."""
    import re

    select_list = sql[:sql.index(' FROM "queues_queue"')]  # the select list's own counts read the steps
    return set(re.findall(rf'"{table}"\."(\w+)"', select_list))


def test_a_list_page_reads_only_the_columns_the_list_shows(api, operator):
    """Issue #12 (list p95 <= 20 ms: read only the columns the list shows): the page query read every
    queue column (the row's `updated_at`, `changes_pending`) and the submitter's whole user row
    (password hash, names, dates) to show a username; each column is decoded into Python per row. Now
    the queue's shown columns and the user's username (looked up by its id), in every form of the page;
    the rows stay what they were (pinned above) and no column is read later row by row."""
    _history(5, "cols")
    Queue.objects.filter(queue_id__in=["cols-1", "cols-4"]).update(submitted_by=operator)
    shown = {"queue_id", "symbol", "time_range_start", "time_range_end", "status", "source", "message",
             "warnings", "created_at", "started_at", "finished_at", "stop_requested_at",
             "id", "submitted_by_id"}  # keys of the progress counts' and the username's look-ups
    for url, query in (("/api/queues/", {}), ("/api/queues/", {"status": "running"}),
                       ("/api/queues/", {"page": 2, "page_size": 2}), ("/queues/list", {"page": 1})):
        with CaptureQueriesContext(connection) as captured:
            response = api.get(url, query)
        assert response.status_code == 200, response.content
        (page,) = [q["sql"] for q in captured.captured_queries
                   if '"queues_queue"' in q["sql"] and "COUNT(*) AS" not in q["sql"]]
        whole = api.get(url, {**query, "page": 1, "page_size": 50}).json()["results"]
        assert {row["submitted_by"] for row in whole} == {"operator", None}, (url, query)
        assert _selected_columns(page, "queues_queue") == shown, (url, query, page)
        assert _selected_columns(page, "auth_user") == {"id", "username"}, (url, query, page)  # id: the key


def test_a_list_page_builds_no_model_instance_per_row(api, operator):
    """Issue #12 (list p95 <= 20 ms: what a page costs beyond its query): each row of a page was made a
    `Queue` model instance (and its submitter a `User` instance) only to be read back by the
    serializer, about a tenth of the request's Python time. Now a page's rows are the query's named
    rows of the shown columns, in every form of the page (cursor, filtered, numbered, legacy); the
    answer stays DRF's (pinned above)."""
    from django.contrib.auth import get_user_model
    from django.db.models.signals import post_init

    _history(6, "rows")
    Queue.objects.filter(queue_id__startswith="rows-").update(submitted_by=operator)
    made = []

    def count(sender, **kwargs):
        made.append(sender)

    post_init.connect(count, sender=Queue)
    post_init.connect(count, sender=get_user_model())
    try:
        for url, query in (("/api/queues/", {}), ("/api/queues/", {"status": "running", "target": "gnn-trainer"}),
                           ("/api/queues/", {"page": 2}), ("/queues/list", {"page": 1})):
            made.clear()
            response = api.get(url, {**query, "page_size": 2})
            assert response.status_code == 200, response.content
            assert response.json()["results"] and made == [], (url, query, made)
    finally:
        post_init.disconnect(count, sender=Queue)
        post_init.disconnect(count, sender=get_user_model())
