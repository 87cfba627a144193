"""The admin as an operator's console while pipelines run: live queue page, step page, stop/retry buttons."""
from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from jobs import services
from queues.models import Queue, QueueRequest, QueueStatus, StepState, TelemetryEvent
from tests.queues import factories
from tests.queues.factories import UserFactory

pytestmark = pytest.mark.django_db


def make_queue(queue_id: str) -> Queue:
    """A submitted queue before its first advance: every step waiting, for the tests to place."""
    return factories.make_queue(queue_id=queue_id, first_advance=False)


def step_at(queue: Queue, position: int) -> QueueRequest:
    return queue.steps.get(position=position)


def run_step(step: QueueRequest, **fields) -> None:
    now = timezone.now()
    step.transition(StepState.RUNNING, launched_at=now, started_at=now, **fields)
    services.queue_refresh_status(queue=step.queue)


def live_url(queue: Queue) -> str:
    return reverse("admin:queues_queue_live", args=[queue.pk])


def queue_url(queue: Queue) -> str:
    return reverse("admin:queues_queue_change", args=[queue.pk])


def test_it_reports_the_queue_and_its_steps_live_as_json(admin_client):
    queue = make_queue("live-q")
    trainer = queue.steps.get(target="gnn-trainer")
    run_step(trainer, reported_status="loading", records_written=12345, extra={"epoch": 3, "loss": 0.4213}, message="epoch 3 done")
    response = admin_client.get(live_url(queue))
    data = response.json()
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert data["queue_id"] == "live-q" and data["status"] == QueueStatus.RUNNING and data["active"] is True
    names = [s["name"] for s in data["steps"]]  # in the order they run: every upstream before its downstreams
    assert sorted(names) == sorted(queue.steps.values_list("name", flat=True))
    for edge in queue.edges.select_related("upstream", "downstream"):
        assert names.index(edge.upstream.name) < names.index(edge.downstream.name)
    row = next(s for s in data["steps"] if s["id"] == trainer.pk)
    assert row["state"] == "running" and row["records_written"] == 12345 and row["reported_status"] == "loading"
    assert row["extra"] == {"epoch": 3, "loss": 0.4213} and row["message"] == "epoch 3 done"
    assert row["launched_at"] and row["started_at"] and row["finished_at"] is None and row["can_stop"] is True
    assert "12,345" in row["cells"]["progress"] and "epoch&nbsp;3" in row["cells"]["progress"]
    assert "loss&nbsp;0.4213" in row["cells"]["progress"] and ">running<" in row["cells"]["state"]
    assert data["can_stop"] is True and data["can_retry"] is False

    trainer.transition(StepState.FAILED, message="CUDA out of memory")
    queue.steps.exclude(pk=trainer.pk).update(state=StepState.STOPPED)  # what the failure policy does
    services.queue_refresh_status(queue=queue)
    data = admin_client.get(live_url(queue)).json()
    row = next(s for s in data["steps"] if s["id"] == trainer.pk)
    assert data["status"] == QueueStatus.FAILED and data["active"] is False and data["can_retry"] is True
    assert row["state"] == "failed" and row["finished_at"] and row["can_stop"] is False
    assert "CUDA out of memory" in row["cells"]["message"]


def test_it_forbids_the_live_endpoint_without_view_permission(client, staff_viewer):
    queue = make_queue("secret-q")
    nobody = UserFactory(username="staff-nobody", is_staff=True)
    client.force_login(nobody)
    assert client.get(live_url(queue)).status_code == 403
    client.logout()
    assert client.get(live_url(queue)).status_code == 302  # to the admin login
    client.force_login(staff_viewer)
    assert client.get(live_url(queue)).json()["status"] == QueueStatus.PENDING


def test_it_renders_the_queue_page_with_live_cells_links_and_buttons(client, staff_operator):
    queue = make_queue("page-q")
    run_step(step_at(queue, 0), reported_status="started", message="connected to Kafka")
    client.force_login(staff_operator)
    html = client.get(queue_url(queue)).content.decode()
    step = step_at(queue, 0)
    assert live_url(queue) in html and "SFConsole.queuePage" in html and 'id="sf-dag"' in html
    assert f'data-sf-step="{step.pk}" data-sf-cell="state"' in html and "connected to Kafka" in html
    assert reverse("admin:queues_queuerequest_change", args=[step.pk]) in html
    assert reverse("admin:queues_queuerequest_stop", args=[step.pk]) in html and 'id="sf-step-stop-form"' in html
    assert "Stop queue" in html and "Retry failed/stopped steps" in html  # retry is rendered hidden until useful
    assert reverse("admin-queue-manifests", kwargs={"queue_id": "page-q"}) in html and "Preview Jobs (dry run)" in html
    assert '<meta http-equiv="refresh"' in html  # the no-script fallback while active


def test_it_does_not_poll_a_finished_queue(client, staff_operator):
    queue = make_queue("done-q")
    services.queue_stop(queue=queue, user=staff_operator)
    client.force_login(staff_operator)
    html = client.get(queue_url(queue)).content.decode()
    assert '<meta http-equiv="refresh"' not in html
    assert client.get(live_url(queue)).json()["active"] is False  # the page's script stops after its first poll


def test_it_shows_stored_logs_events_and_dependencies_on_the_step_page(client, staff_viewer):
    queue = make_queue("step-page-q")
    builder = queue.steps.get(target="graph-builder")
    upstream = [edge.upstream for edge in builder.upstream_edges.select_related("upstream")]
    assert upstream  # the historical graph-builder waits for both connectors
    run_step(upstream[0])
    run_step(builder)
    builder.transition(StepState.SUCCEEDED, logs="line one\nbuilt 42 edges <ok>\n", records_written=42)
    for n in range(55):
        TelemetryEvent.objects.create(
            queue=queue, step=builder, event_key=f"ev-{n}", status="loading", records_written=n,
            message=f"progress {n:02d}", payload={"extra": {"batch": n}},
        )  # fmt: skip
    client.force_login(staff_viewer)
    html = client.get(reverse("admin:queues_queuerequest_change", args=[builder.pk])).content.decode()
    assert 'id="sf-logs"' in html and "built 42 edges &lt;ok&gt;" in html and "kept when the step ended" in html
    assert "progress 54" in html and "progress 05" in html and "progress 04" not in html  # the last 50 only
    assert "batch=54" in html
    for step in upstream:
        assert reverse("admin:queues_queuerequest_change", args=[step.pk]) in html and step.name in html
    assert "Waits for" in html and "Is waited on by" in html and "✘ not met" in html and "✔ met" in html
    assert queue_url(queue) in html  # back to the queue
    assert "Stop step" not in html  # a viewer may not stop, and the step has ended anyway


def test_it_opens_the_page_of_a_running_step_without_kept_logs(client, staff_operator):
    queue = make_queue("running-step-q")
    step = step_at(queue, 0)
    run_step(step)
    client.force_login(staff_operator)
    response = client.get(reverse("admin:queues_queuerequest_change", args=[step.pk]))
    html = response.content.decode()
    assert response.status_code == 200 and 'id="sf-logs"' in html
    assert "No telemetry received" in html and "Stop step" in html and 'id="sf-log-follow"' in html


def test_it_stops_one_step_from_the_queue_page(client, staff_operator):
    queue = make_queue("stop-step-q")
    running, waiting = step_at(queue, 0), step_at(queue, 5)
    run_step(running)
    client.force_login(staff_operator)
    response = client.post(reverse("admin:queues_queuerequest_stop", args=[running.pk]), {"next": queue_url(queue)}, follow=True)
    assert response.redirect_chain[-1][0] == queue_url(queue)
    assert f"Step {running.name} of stop-step-q is stopping" in response.content.decode()
    running.refresh_from_db()
    assert running.state == StepState.STOPPING and running.stop_requested_at is not None
    response = client.post(reverse("admin:queues_queuerequest_stop", args=[waiting.pk]), follow=True)
    waiting.refresh_from_db()
    assert waiting.state == StepState.STOPPED and "cancelled" in response.content.decode()
    response = client.post(reverse("admin:queues_queuerequest_stop", args=[waiting.pk]), follow=True)
    assert "already stopped; nothing to stop" in response.content.decode()


def test_it_ignores_a_foreign_next_url(client, staff_operator):
    queue = make_queue("next-q")
    client.force_login(staff_operator)
    response = client.post(reverse("admin:queues_queuerequest_stop", args=[step_at(queue, 1).pk]), {"next": "https://evil.example/"})
    assert response["Location"] == queue_url(queue)


def test_it_retries_failed_steps_from_the_queue_page(client, staff_operator):
    queue = make_queue("retry-q")
    step = step_at(queue, 0)
    old_job = step.job_name
    run_step(step)
    step.transition(StepState.FAILED, message="boom")
    services.queue_refresh_status(queue=queue)
    client.force_login(staff_operator)
    assert "hidden" not in client.get(queue_url(queue)).content.decode().split('data-sf-queue-button="retry"')[1][:20]
    response = client.post(reverse("admin:queues_queue_retry", args=[queue.pk]), follow=True)
    assert "Retrying 1 step(s) of retry-q" in response.content.decode()
    step.refresh_from_db()
    queue.refresh_from_db()
    assert step.state == StepState.WAITING and step.run == 2 and step.job_name != old_job and step.finished_at is None
    assert queue.status in QueueStatus.ACTIVE
    response = client.post(reverse("admin:queues_queue_retry", args=[queue.pk]), follow=True)
    assert "Nothing to retry in retry-q" in response.content.decode()
    assert client.get(reverse("admin:queues_queue_retry", args=[queue.pk])).status_code == 405


def test_it_retries_selected_queues_from_the_list(client, staff_operator):
    failed, untouched = make_queue("retry-a"), make_queue("retry-b")
    services.queue_stop(queue=failed, user=staff_operator)  # every waiting step cancelled: stopped
    client.force_login(staff_operator)
    form = {"action": "retry_selected", "_selected_action": [failed.pk, untouched.pk]}
    confirm = client.post("/admin/queues/queue/", form).content.decode()  # a confirmation page first; nothing acts yet
    assert "Retry 1 queue" in confirm and "skipped: no failed, stopped or lost step" in confirm
    assert set(failed.steps.values_list("run", flat=True)) == {1}
    response = client.post("/admin/queues/queue/", {**form, "post": "yes"}, follow=True)
    html = response.content.decode()
    assert "Retrying 6 step(s) in 1 queue(s)." in html and "Nothing to retry in: retry-b." in html
    assert set(failed.steps.values_list("state", "run")) == {(StepState.WAITING, 2)}
    failed.refresh_from_db()
    assert failed.status == QueueStatus.PENDING and failed.stop_requested_at is None


def test_it_hides_controls_from_viewers_and_refuses_their_posts(client, staff_viewer):
    queue = make_queue("viewer-q")
    step = step_at(queue, 0)
    run_step(step)
    step.transition(StepState.FAILED)
    services.queue_refresh_status(queue=queue)
    client.force_login(staff_viewer)
    html = client.get(queue_url(queue)).content.decode()
    assert "Stop step" not in html and "Retry failed/stopped steps" not in html and "Stop queue" not in html
    assert "retry_selected" not in client.get("/admin/queues/queue/").content.decode()
    assert client.post(reverse("admin:queues_queue_retry", args=[queue.pk])).status_code == 403
    assert client.post(reverse("admin:queues_queuerequest_stop", args=[step_at(queue, 1).pk])).status_code == 403
    client.post("/admin/queues/queue/", {"action": "retry_selected", "_selected_action": [queue.pk]})
    step.refresh_from_db()
    assert step.state == StepState.FAILED and step_at(queue, 1).state == StepState.WAITING


def test_it_needs_start_and_stop_permission_to_retry(client):
    stopper = UserFactory(username="stopper", is_staff=True, perms=["view_queue", "view_queuerequest", "stop_queue"])
    queue = make_queue("half-perms-q")
    services.queue_stop(queue=queue)
    client.force_login(stopper)
    assert "Retry failed/stopped steps" not in client.get(queue_url(queue)).content.decode()
    assert client.post(reverse("admin:queues_queue_retry", args=[queue.pk])).status_code == 403
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}
    # Stopping one step needs only stop_queue.
    other = make_queue("half-perms-2")
    assert client.post(reverse("admin:queues_queuerequest_stop", args=[step_at(other, 0).pk])).status_code == 302
    assert step_at(other, 0).state == StepState.STOPPED
