"""The admin console: queue list and page, the Start a queue page, stopping queues."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from queues.models import Queue, QueueStatus
from jobs.services import queue_create
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
    make_queue(queue_id="find-me")
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
    a, b = make_queue(queue_id="stop-a"), make_queue(queue_id="stop-b")
    keep = make_queue(queue_id="keep-running")
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
    queue = make_queue(queue_id="one-stop")
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
