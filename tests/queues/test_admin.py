"""The admin console: queue list and page, the Start a queue page, stopping queues."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from queues.models import Queue, QueueStatus
from jobs.submission import queue_create
from tests.queues.factories import UserFactory, make_queue, payload

pytestmark = pytest.mark.django_db

START_URL = "/admin/queues/queue/start/"
LIST_URL = "/admin/queues/queue/"


def test_it_lists_queues_with_status_progress_and_a_start_button(client, staff_operator):
    queue = make_queue(queue_id="listed-q", user=staff_operator)
    queue.steps.filter(position__in=[0, 2, 3]).update(state="succeeded")
    client.force_login(staff_operator)
    response = client.get(LIST_URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert "listed-q" in html and "3/6 succeeded" in html and "sf-badge" in html
    assert "2024-06-01:2024-06-30" in html
    assert START_URL in html
    assert "/admin/queues/queue/add/" not in html  # queues are started, not added


def test_it_searches_and_filters_the_list(client, staff_operator):
    make_queue(queue_id="find-me", first_advance=False)
    make_queue("realtime-pipeline", queue_id="other-one", symbol="ETHUSDT")
    client.force_login(staff_operator)
    assert "other-one" not in client.get(LIST_URL, {"q": "find"}).content.decode()
    html = client.get(LIST_URL, {"symbol": "ETHUSDT"}).content.decode()
    assert "other-one" in html and "find-me" not in html
    assert "find-me" in client.get(LIST_URL, {"status__exact": "pending"}).content.decode()


def test_it_shows_a_queue_with_steps_edges_and_warnings_read_only(client, staff_operator):
    data = payload()
    data["requests"][4]["collection_inputs"].append("eth_trades_2024_06")
    queue, _ = queue_create(payload=data, queue_id="shown-q")
    client.force_login(staff_operator)
    response = client.get(reverse("admin:queues_queue_change", args=[queue.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    for step in queue.steps.all():
        assert step.job_name in html and step.name in html
    assert "graph-builder-gnn-graph" in html and "arango-connector-api-trades</strong> has succeeded" in html
    assert "eth_trades_2024_06" in html  # the warning
    assert 'name="symbol"' not in html and 'name="job_name"' not in html  # nothing editable
    assert "Stop queue" in html


def test_it_hides_the_start_button_and_page_from_a_viewer(client, staff_viewer):
    client.force_login(staff_viewer)
    assert START_URL not in client.get(LIST_URL).content.decode()
    assert client.get(START_URL).status_code == 403
    assert client.post(START_URL, {"payload": json.dumps(payload())}).status_code == 403
    assert Queue.objects.count() == 0


def test_it_renders_the_start_page_with_both_templates(client, staff_operator):
    client.force_login(staff_operator)
    response = client.get(START_URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert 'value="historical-pipeline"' in html and 'value="realtime-pipeline"' in html
    assert 'id="sf-templates"' in html  # the data the picker script fills the textarea from


def test_it_prefills_the_start_page_from_a_template_parameter(client, staff_operator):
    client.force_login(staff_operator)
    form = client.get(START_URL, {"template": "realtime-pipeline"}).context["form"]
    assert json.loads(form.initial["payload"]) == payload("realtime-pipeline")


def test_it_starts_a_queue_from_the_start_page(client, staff_operator):
    client.force_login(staff_operator)
    response = client.post(START_URL, {"template": "", "payload": json.dumps(payload()), "queue_id": "from-admin"})
    queue = Queue.objects.get(queue_id="from-admin")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:queues_queue_change", args=[queue.pk])
    assert queue.source == "admin" and queue.submitted_by == staff_operator and queue.steps.count() == 6
    page = client.get(response["Location"]).content.decode()
    assert "Queue from-admin created with 6 steps." in page


def test_it_returns_the_same_queue_when_resubmitted_from_the_start_page(client, staff_operator):
    client.force_login(staff_operator)
    form = {"payload": json.dumps(payload()), "queue_id": "twice"}
    client.post(START_URL, form)
    response = client.post(START_URL, form, follow=True)
    assert Queue.objects.count() == 1
    assert "already existed" in response.content.decode()


def test_it_shows_payload_errors_by_field_path_and_creates_nothing(client, staff_operator):
    data = payload()
    del data["requests"][4]["collection_output"]
    data["requests"][0]["target"] = "nope"
    client.force_login(staff_operator)
    response = client.post(START_URL, {"payload": json.dumps(data)})
    html = response.content.decode()
    assert response.status_code == 200
    assert "requests[4].collection_output" in html
    assert "This field is required for target graph-builder (gnn_graph)." in html
    assert "requests[0].target" in html
    assert Queue.objects.count() == 0


@pytest.mark.parametrize(
    "form, field",
    [
        ({"payload": "{not json"}, "payload"),
        ({"payload": ""}, "payload"),
        ({"payload": json.dumps(payload()), "queue_id": "Bad_Id"}, "queue_id"),
    ],
)
def test_it_shows_form_errors_for_bad_json_and_queue_ids(client, staff_operator, form, field):
    client.force_login(staff_operator)
    response = client.post(START_URL, form)
    assert response.status_code == 200
    assert response.context["form"].errors[field]
    assert Queue.objects.count() == 0


def test_it_shows_a_conflict_on_the_queue_id_field(client, staff_operator):
    make_queue(queue_id="taken")
    client.force_login(staff_operator)
    response = client.post(START_URL, {"payload": json.dumps(payload("realtime-pipeline")), "queue_id": "taken"})
    assert "different payload" in " ".join(response.context["form"].errors["queue_id"])


def test_it_stops_selected_queues(client, staff_operator):
    a, b = make_queue(queue_id="stop-a", first_advance=False), make_queue(queue_id="stop-b", first_advance=False)
    keep = make_queue(queue_id="keep-running", first_advance=False)
    client.force_login(staff_operator)
    form = {"action": "stop_selected", "_selected_action": [a.pk, b.pk]}
    confirm = client.post(LIST_URL, form).content.decode()  # a confirmation page listing them; nothing stops yet
    assert "Stop 2 queues" in confirm and "stop-a" in confirm and "stop-b" in confirm and "keep-running" not in confirm
    assert not Queue.objects.filter(status=QueueStatus.STOPPED).exists()
    response = client.post(LIST_URL, {**form, "post": "yes"}, follow=True)
    assert "Stop requested for 2 queue(s)." in response.content.decode()
    assert set(Queue.objects.filter(status=QueueStatus.STOPPED).values_list("queue_id", flat=True)) == {"stop-a", "stop-b"}
    keep.refresh_from_db()
    assert keep.status == QueueStatus.PENDING


def test_it_offers_the_stop_action_only_to_those_who_may_stop(client, staff_viewer):
    queue = make_queue(queue_id="not-yours")
    client.force_login(staff_viewer)
    html = client.get(LIST_URL).content.decode()
    assert "stop_selected" not in html
    client.post(LIST_URL, {"action": "stop_selected", "_selected_action": [queue.pk]})
    assert client.post(f"/admin/queues/queue/{queue.pk}/stop/").status_code == 403
    queue.refresh_from_db()
    assert queue.stop_requested_at is None


def test_it_stops_one_queue_from_its_page(client, staff_operator):
    queue = make_queue(queue_id="one-stop", first_advance=False)
    client.force_login(staff_operator)
    response = client.post(f"/admin/queues/queue/{queue.pk}/stop/")
    assert response.status_code == 302
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPED
    assert client.get(f"/admin/queues/queue/{queue.pk}/stop/").status_code == 405


def test_it_shows_steps_read_only_with_filters(client, staff_operator):
    queue = make_queue(queue_id="steps-q")
    step = queue.steps.get(position=4)
    client.force_login(staff_operator)
    html = client.get("/admin/queues/queuerequest/", {"target": "graph-builder"}).content.decode()
    assert step.job_name in html and "loader-producer-api-trades" not in html
    page = client.get(reverse("admin:queues_queuerequest_change", args=[step.pk])).content.decode()
    assert "btc_candles_5m_2024_06, btc_trades_2024_06" in page and step.telemetry_id in page
    assert "/admin/queues/queuerequest/add/" not in html


def test_it_keeps_users_without_admin_access_out(client):
    plain = UserFactory(username="plain", perms=["view_queue"])
    client.force_login(plain)
    assert client.get(LIST_URL).status_code == 302
    assert client.get(START_URL).status_code == 302


def _list_queries(client, query: dict | None = None) -> tuple[str, list[str]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get(LIST_URL, query or {})
    assert response.status_code == 200
    return response.content.decode(), [q["sql"] for q in captured.captured_queries]


def test_it_lists_at_a_cost_independent_of_the_history(client, staff_operator):
    """Issue #12 (admin queue list: query count independent of page size and table size; no filter or
    count reads every queue of the history)."""
    for n in range(10):
        make_queue("realtime-pipeline", queue_id=f"few-{n}")
    client.force_login(staff_operator)
    _, few = _list_queries(client)
    for n in range(50):
        make_queue("realtime-pipeline", queue_id=f"more-{n}", symbol="ETHUSDT" if n % 2 else "BTCUSDT")
    html, many = _list_queries(client)
    assert len(many) == len(few)
    assert "60 queues" in html  # exact below QueuePaginator.ESTIMATE_ABOVE
    for sql in many:
        assert "DISTINCT" not in sql.upper() or '"queues_queuerequest"' in sql, sql  # no SELECT DISTINCT over queues
    assert sum("COUNT(" in sql.upper() and '"queues_queue"' in sql for sql in many) == 1  # no second, full count
    for query in ({"symbol": "ETHUSDT"}, {"source": "api", "status__exact": "pending"}, {"p": "2"}):
        assert len(_list_queries(client, query)[1]) <= len(few) + 1, query


def test_it_shows_exact_counts_and_progress_on_every_page_and_filter(client, staff_operator):
    """Issue #12 (progress and counts that the list shows stay exact): counted per shown page."""
    for n in range(55):
        queue = make_queue("realtime-pipeline", queue_id=f"q-{n:02d}", symbol="ETHUSDT" if n < 3 else "BTCUSDT")
        queue.steps.filter(position__lt=n % 4).update(state="succeeded")
    client.force_login(staff_operator)
    html, _ = _list_queries(client, {"p": "2"})
    assert "55 queues" in html
    for n in range(5):  # the oldest five are on the second page
        assert f"q-{n:02d}" in html
    assert html.count("/7 succeeded") == 5 and "3/7 succeeded" in html and "0/7 succeeded" in html
    eth, _ = _list_queries(client, {"symbol": "ETHUSDT"})
    assert "3 queues" in eth and all(f"q-{n:02d}" in eth for n in range(3)) and "q-03" not in eth
    assert "ETHUSDT" in eth and "BTCUSDT" in eth  # both offered by the symbol filter
    assert "1/7 succeeded" in eth and "2/7 succeeded" in eth
    assert client.get(LIST_URL, {"source": "nope"}).status_code in (200, 302)  # the admin's ?e=1, not a 500
    assert client.get(LIST_URL, {"symbol": "a\x00b"}).status_code in (200, 302)


def test_it_estimates_only_the_unfiltered_count_of_a_large_history(client, staff_operator, monkeypatch):
    """Issue #12 (admin count(*) on 100k rows): the unfiltered list takes the planner's estimate; any
    filtered list counts exactly."""
    from django.db import connection

    from console.admin import listing

    for n in range(4):
        make_queue("realtime-pipeline", queue_id=f"est-{n}", symbol="ETHUSDT" if n else "BTCUSDT")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE queues_queue")
    monkeypatch.setattr(listing.QueuePaginator, "ESTIMATE_ABOVE", 0)
    make_queue("realtime-pipeline", queue_id="est-after-analyze")  # not in the estimate yet
    client.force_login(staff_operator)
    html, sqls = _list_queries(client)
    assert "4 queues" in html and not any("COUNT(" in sql.upper() and '"queues_queue"' in sql for sql in sqls)
    assert "3 queues" in _list_queries(client, {"symbol": "ETHUSDT"})[0]
    assert "2 queues" in _list_queries(client, {"symbol": "BTCUSDT"})[0]  # exact: with the one added since


def test_it_reads_each_table_of_a_queue_page_once(client, staff_operator):
    """Issue #12: the fields, buttons, graph data and both inlines share one read of the queue, its steps
    and its edges (the page was 18 queries, most reading the same rows again, one per step for its name)."""
    queue = make_queue(queue_id="read-once")
    client.force_login(staff_operator)
    url = reverse("admin:queues_queue_change", args=[queue.pk])
    _page_queries(client, url)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    tables = [q["sql"].split(" FROM ", 1)[1].split()[0].strip('"') for q in captured]
    # The session's user and its two permission reads (user and group), then the page's own four.
    assert sorted(tables) == sorted([
        "auth_user", "auth_permission", "auth_permission",
        "queues_queue", "queues_queuerequest", "queues_stepdependency", "queues_auditentry",
    ])


def test_it_shows_a_queue_page_in_queries_independent_of_the_history(client, staff_operator):
    """Issue #12 (admin queue page: a bounded number of queries, independent of history)."""
    queue = make_queue(queue_id="the-page")
    client.force_login(staff_operator)
    url = reverse("admin:queues_queue_change", args=[queue.pk])
    _page_queries(client, url)  # warm: per-process caches (content types) fill on the first view
    before = _page_queries(client, url)
    for n in range(8):
        make_queue(queue_id=f"history-{n}")
    assert _page_queries(client, url) == before
    assert client.get(reverse("admin:queues_queue_live", args=[queue.pk])).status_code == 200


def _page_queries(client, url) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)



def test_the_home_page_lists_the_queues_first(client, admin_user):
    """The console's home listed its apps alphabetically — mirror, tokens, users, and Queues last: the
    operator's first stop is the queues (then the mirror, then accounts)."""
    client.force_login(admin_user)
    labels = [app["app_label"] for app in client.get(reverse("admin:index")).context["app_list"]]
    assert labels[0] == "queues", labels
    assert labels.index("mirror") < labels.index("auth"), labels


def test_the_home_page_says_what_runs_now_and_what_ended_today_with_links_to_the_list(client, staff_operator):
    """The home page was a list of tables: an operator opening the console at 3 a.m. had to open the
    queue list and filter it to learn what runs and what failed. It now counts the active queues and
    today's by status (two indexed queries, whatever the history), each a link to the list filtered
    alike, and offers "Start a queue" to who may start one."""
    import re
    from datetime import timedelta

    from django.utils import timezone

    running = [make_queue(queue_id=f"home-run-{i}") for i in range(2)]
    Queue.objects.filter(pk__in=[q.pk for q in running]).update(status=QueueStatus.RUNNING)
    failed = make_queue(queue_id="home-failed")
    Queue.objects.filter(pk=failed.pk).update(status=QueueStatus.FAILED)
    old = make_queue(queue_id="home-old")  # failed last week: not today's
    Queue.objects.filter(pk=old.pk).update(status=QueueStatus.FAILED, created_at=timezone.now() - timedelta(days=7))

    client.force_login(staff_operator)
    html = client.get(reverse("admin:index")).content.decode()
    links = {name: href.replace("&amp;", "&")
             for href, name in re.findall(r'<a href="([^"]+)" data-sf-summary="([a-z_]+)">', html)}
    assert re.search(r'data-sf-summary="active_running">\s*2 running', html), html
    assert re.search(r'data-sf-summary="today_failed">\s*1 failed', html), html
    assert START_URL in html
    for name, expected in (("active_running", 2), ("today_failed", 1)):
        listed = client.get(links[name]).content.decode()
        assert f"{expected} queue" in listed and "?e=1" not in links[name], (name, links[name])

    client.force_login(UserFactory(is_staff=True))  # no permission on queues: no figures at all
    assert "data-sf-summary" not in client.get(reverse("admin:index")).content.decode()
