"""Audit and history (issue #15 §7): every start, stop, retry and step stop from the API, the admin and
Kafka is recorded with who, when, where from and the result; a retried step's earlier run stays visible."""
from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from consumers import control
from jobs import services
from queues.history import AuditEntry, StepRun
from queues.models import Queue, StepState
from tests.queues.factories import payload

pytestmark = pytest.mark.django_db

ADDRESS = "203.0.113.7"


def entries(**filters) -> list[tuple]:
    rows = AuditEntry.objects.filter(**filters).order_by("pk")
    return [(e.action, e.result, e.source, e.who, e.address, e.command_id, e.queue_ref, e.step_name) for e in rows]


def fail_step(queue: Queue, name: str, *, records: int = 0, message: str = "boom") -> None:
    step = queue.steps.get(name=name)
    now = timezone.now()
    step.transition(StepState.RUNNING, launched_at=now, started_at=now, records_written=records, job_name=step.job_name)
    services.step_transition(step, StepState.FAILED, message=message)
    services.queue_refresh_status(queue=queue)


def test_it_records_api_starts_with_user_address_and_each_result(api, operator):
    """§7 who/when/where/result for starts from the API: accepted, duplicate, conflict, rejected + reason."""
    body = {**payload(), "queue_id": "audit-api-1"}
    assert api.post("/api/queues/", body, format="json", REMOTE_ADDR=ADDRESS).status_code == 201
    assert api.post("/api/queues/", body, format="json", REMOTE_ADDR=ADDRESS).status_code == 200
    other = {**payload(symbol="ETHUSDT"), "queue_id": "audit-api-1"}
    assert api.post("/api/queues/", other, format="json", REMOTE_ADDR=ADDRESS).status_code == 409
    bad = {**payload(), "queue_id": "audit-api-2", "requests": [{"target": "no-such-target"}]}
    assert api.post("/api/queues/", bad, format="json", REMOTE_ADDR=ADDRESS).status_code == 400

    who = operator.username
    assert entries() == [
        ("start", "accepted", "api", who, ADDRESS, "", "audit-api-1", ""),
        ("start", "duplicate", "api", who, ADDRESS, "", "audit-api-1", ""),
        ("start", "conflict", "api", who, ADDRESS, "", "audit-api-1", ""),
        ("start", "rejected", "api", who, ADDRESS, "", "audit-api-2", ""),
    ]
    queue = Queue.objects.get(queue_id="audit-api-1")
    assert AuditEntry.objects.filter(queue=queue).count() == 3
    rejected = AuditEntry.objects.get(result="rejected")
    assert rejected.queue is None and "target" in rejected.reason and rejected.user == operator
    assert rejected.at is not None


def test_it_records_a_rejected_start_whose_field_names_no_database_text_can_hold(api):
    """Found by the API fuzzer: an unknown field name with NUL went into the audit's reason, PostgreSQL
    refused it and the client got a 500 instead of its 400."""
    body = '{"symbol": "BTCUSDT", "requests": [], "bad\\u0000name": 1}'
    response = api.post("/api/queues/", body, content_type="application/json")
    assert response.status_code == 400
    rejected = AuditEntry.objects.get(result="rejected")
    assert "\x00" not in rejected.reason and "Unknown field" in rejected.reason


def test_it_refuses_a_lone_surrogate_escape_with_a_400(api):
    """Found by the API fuzzer: `\\ud800` parsed into text no UTF-8 can hold; echoing it in the 400's field
    message (or storing it) failed with a 500. The parser refuses such a body."""
    body = '{"symbol": "BTCUSDT", "requests": [], "odd\\ud800name": 2}'
    response = api.post("/api/queues/", body, content_type="application/json")
    assert response.status_code == 400
    assert "surrogate" in response.json()["detail"]


def test_it_records_api_stop_retry_and_step_stop_with_results(api, operator):
    """§7 stops, retries and step stops from the API, the idempotent repeats as duplicates, nothing to retry as rejected."""
    assert api.post("/api/queues/", {**payload(), "queue_id": "audit-api-3"}, format="json").status_code == 201
    queue = Queue.objects.get(queue_id="audit-api-3")
    name = queue.steps.order_by("position").first().name
    base = "/api/queues/audit-api-3"
    assert api.post(f"{base}/retry/", REMOTE_ADDR=ADDRESS).status_code == 409
    assert api.post(f"{base}/steps/{name}/stop/", REMOTE_ADDR=ADDRESS).status_code == 202
    assert api.post(f"{base}/steps/{name}/stop/", REMOTE_ADDR=ADDRESS).status_code == 202
    assert api.post(f"{base}/stop/", REMOTE_ADDR=ADDRESS).status_code == 202
    assert api.post(f"{base}/stop/", REMOTE_ADDR=ADDRESS).status_code == 202
    assert api.post(f"{base}/retry/", REMOTE_ADDR=ADDRESS).status_code == 202

    who = operator.username
    assert entries(queue=queue)[1:] == [
        ("retry", "rejected", "api", who, ADDRESS, "", "audit-api-3", ""),
        ("step_stop", "accepted", "api", who, ADDRESS, "", "audit-api-3", name),
        ("step_stop", "duplicate", "api", who, ADDRESS, "", "audit-api-3", name),
        ("stop", "accepted", "api", who, ADDRESS, "", "audit-api-3", ""),
        ("stop", "duplicate", "api", who, ADDRESS, "", "audit-api-3", ""),
        ("retry", "accepted", "api", who, ADDRESS, "", "audit-api-3", ""),
    ]
    retry = AuditEntry.objects.filter(queue=queue, action="retry", result="accepted").get()
    assert sorted(retry.detail["steps"]) == sorted(queue.steps.values_list("name", flat=True))
    assert "Nothing to retry" in AuditEntry.objects.get(queue=queue, action="retry", result="rejected").reason


def test_it_records_kafka_commands_by_command_id():
    """§7 starts and stops from Kafka: who is the command_id, source kafka; replays are duplicates; refusals kept."""
    start = {"command": "start", "command_id": "audit-c1", "queue_id": "audit-kafka-1", **payload()}
    assert control.handle_command(start).status == "accepted"
    assert control.handle_command(start).duplicate is True
    stop_step = {"command": "stop", "command_id": "audit-c2", "queue_id": "audit-kafka-1",
                 "telemetry_id": Queue.objects.get(queue_id="audit-kafka-1").steps.first().telemetry_id}
    assert control.handle_command(stop_step).status == "accepted"
    assert control.handle_command({"command": "stop", "command_id": "audit-c3", "queue_id": "audit-kafka-1"}).status == "accepted"
    assert control.handle_command({"command": "stop", "command_id": "audit-c4", "queue_id": "nope"}).status == "rejected"
    assert control.handle_command({"command": "start", "command_id": "audit-c5", "requests": []}).status == "rejected"

    step_name = Queue.objects.get(queue_id="audit-kafka-1").steps.first().name
    assert entries() == [
        ("start", "accepted", "kafka", "kafka command audit-c1", "", "audit-c1", "audit-kafka-1", ""),
        ("start", "duplicate", "kafka", "kafka command audit-c1", "", "audit-c1", "audit-kafka-1", ""),
        ("step_stop", "accepted", "kafka", "kafka command audit-c2", "", "audit-c2", "audit-kafka-1", step_name),
        ("stop", "accepted", "kafka", "kafka command audit-c3", "", "audit-c3", "audit-kafka-1", ""),
        ("stop", "rejected", "kafka", "kafka command audit-c4", "", "audit-c4", "nope", ""),
        ("start", "rejected", "kafka", "kafka command audit-c5", "", "audit-c5", "", ""),
    ]
    assert "unknown queue" in AuditEntry.objects.get(command_id="audit-c4").reason


def test_it_records_admin_actions_and_shows_them_in_history_and_live(client, staff_operator):
    """§7 admin start/retry/step stop/stop recorded as admin with the address; the admin History page and the
    queue page's live JSON show them."""
    client.force_login(staff_operator)
    start = reverse("admin:queues_queue_start")
    import json

    response = client.post(start, {"payload": json.dumps(payload()), "queue_id": "audit-admin-1"}, REMOTE_ADDR=ADDRESS)
    assert response.status_code == 302, response.content[:2000]
    queue = Queue.objects.get(queue_id="audit-admin-1")
    step = queue.steps.order_by("position").first()
    client.post(reverse("admin:queues_queuerequest_stop", args=[step.pk]), REMOTE_ADDR=ADDRESS)
    client.post(reverse("admin:queues_queue_stop", args=[queue.pk]), REMOTE_ADDR=ADDRESS)
    client.post(reverse("admin:queues_queue_retry", args=[queue.pk]), REMOTE_ADDR=ADDRESS)

    who = staff_operator.username
    assert entries(queue=queue) == [
        ("start", "accepted", "admin", who, ADDRESS, "", "audit-admin-1", ""),
        ("step_stop", "accepted", "admin", who, ADDRESS, "", "audit-admin-1", step.name),
        ("stop", "accepted", "admin", who, ADDRESS, "", "audit-admin-1", ""),
        ("retry", "accepted", "admin", who, ADDRESS, "", "audit-admin-1", ""),
    ]
    history = client.get(reverse("admin:queues_queue_history", args=[queue.pk])).content.decode()
    assert f"step stop of step {step.name} by {who} (admin from {ADDRESS}): accepted" in history
    assert f"retry by {who} (admin from {ADDRESS}): accepted" in history
    live = client.get(reverse("admin:queues_queue_live", args=[queue.pk])).json()
    assert [row["action"] for row in live["history"]] == ["retry", "stop", "step_stop", "start"]
    assert live["history"][0]["who"] == who and live["history"][0]["address"] == ADDRESS
    assert live["history"][0]["result"] == "accepted" and live["history"][0]["at"]


def test_it_keeps_each_run_of_a_retried_step(api, admin_client):
    """§7 earlier runs of a retried step stay visible: each run's end (state, times, records, message), on the step page."""
    assert api.post("/api/queues/", {**payload(), "queue_id": "audit-runs-1"}, format="json").status_code == 201
    queue = Queue.objects.get(queue_id="audit-runs-1")
    name = queue.steps.order_by("position").first().name
    first_job = queue.steps.get(name=name).job_name
    fail_step(queue, name, records=120, message="first failure")
    assert api.post("/api/queues/audit-runs-1/retry/").status_code == 202
    fail_step(queue, name, records=7, message="second failure")
    assert api.post("/api/queues/audit-runs-1/retry/").status_code == 202

    step = queue.steps.get(name=name)
    assert step.run == 3 and step.state == StepState.WAITING
    runs = [(r.run, r.state, r.records_written, r.message, r.started_at is not None, r.finished_at is not None)
            for r in StepRun.objects.filter(step=step).order_by("run")]
    assert runs == [(1, "failed", 120, "first failure", True, True), (2, "failed", 7, "second failure", True, True)]
    assert StepRun.objects.get(step=step, run=1).job_name == first_job

    page = admin_client.get(reverse("admin:queues_queuerequest_change", args=[step.pk])).content.decode()
    section = page[page.index("Earlier runs"):]
    assert "first failure" in section and "second failure" in section and first_job in section
    assert section.index("second failure") < section.index("first failure")  # newest first


def test_it_lists_refused_starts_under_audit_entries(api, admin_client):
    """§7 a rejected start has no queue: the admin's Audit entries list shows it with the queue_id asked for."""
    bad = {**payload(), "queue_id": "audit-refused-1", "symbol": "??"}
    assert api.post("/api/queues/", bad, format="json").status_code == 400
    page = admin_client.get(reverse("admin:queues_auditentry_changelist")).content.decode()
    assert "audit-refused-1" in page and "rejected" in page


def test_it_starts_a_retried_run_with_empty_logs_and_extra(api):
    """A retry kept the ended run's log tail and `extra` on the step: the new run showed them as its own,
    and its own log tail was never captured (logs are kept only while the field is empty). They now
    stay with the ended run (StepRun) and the new run starts empty."""
    assert api.post("/api/queues/", {**payload(), "queue_id": "audit-runs-2"}, format="json").status_code == 201
    queue = Queue.objects.get(queue_id="audit-runs-2")
    name = queue.steps.order_by("position").first().name
    fail_step(queue, name, message="first failure")
    queue.steps.filter(name=name).update(logs="run 1 said goodbye", extra={"epoch": 3, "loss": 0.5})
    assert api.post("/api/queues/audit-runs-2/retry/").status_code == 202

    step = queue.steps.get(name=name)
    assert (step.run, step.logs, step.extra) == (2, "", {})
    earlier = StepRun.objects.get(step=step, run=1)
    assert earlier.logs == "run 1 said goodbye" and earlier.extra == {"epoch": 3, "loss": 0.5}
