"""Operator console v2 (issue #15): what the queue page, the list and the step page show, server side.

The browser-side drawing (DAG, timeline, log follow) is exercised in tests/browser/.
"""
from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.launchers import get_launcher
from jobs import services
from queues.models import Queue, QueueRequest, StepState, TelemetryEvent
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

LIST_URL = "/admin/queues/queue/"


def make(queue_id: str, name: str = "historical-pipeline") -> Queue:
    """A submitted queue before its first advance: every step waiting, for the tests to place."""
    return make_queue(name, queue_id=queue_id, first_advance=False)


def run(step: QueueRequest, **fields) -> None:
    now = timezone.now()
    step.transition(StepState.RUNNING, launched_at=now, started_at=now, **fields)
    services.queue_refresh_status(queue=step.queue)


def live(client, queue: Queue) -> dict:
    return client.get(reverse("admin:queues_queue_live", args=[queue.pk])).json()


def test_it_counts_running_streaming_steps_as_healthy(client, staff_operator):
    """Issue #15, progress: 7 of 7 streaming steps running showed "0/7 done" with an empty bar."""
    queue = make("all-streaming", "realtime-pipeline")
    for step in queue.steps.all():
        run(step)
    total = queue.steps.count()
    client.force_login(staff_operator)
    cells = live(client, queue)["cells"]
    assert f"{total} running · " in cells["progress"] and ">0 failed<" in cells["progress"]
    assert f"0/{total} succeeded" in cells["progress"] and 'class="sf-bar-seg sf-running" style="width:100.0%"' in cells["progress"]
    html = client.get(LIST_URL).content.decode()
    assert f"{total} running · " in html


def test_it_says_how_many_steps_stopped_where_nothing_else_does(client, staff_operator):
    """A stopped realtime queue read "0 running · 0 failed · 0/7 succeeded" under a full orange bar: the
    text said nothing of the seven stopped steps (the bar's tooltip did). Stopped and waiting steps are
    named in the text, in the list and the page alike, once there are any."""
    queue = make("stopped-counts", "realtime-pipeline")
    steps = list(queue.steps.all())
    for step in steps:
        run(step)
        step.transition(StepState.STOPPED)
    services.queue_refresh_status(queue=queue)
    total = len(steps)
    client.force_login(staff_operator)
    progress = live(client, queue)["cells"]["progress"]
    assert f"0/{total} succeeded · {total} stopped" in progress
    assert f"{total} stopped" in client.get(LIST_URL).content.decode()

    running = make("no-stopped-counts", "realtime-pipeline")
    run(running.steps.first())
    text = re.search(r'class="sf-progress-text">(.*?)</span></span>', live(client, running)["cells"]["progress"])
    assert text and "running" in text.group(1) and "stopped" not in text.group(1)


def test_it_lists_steps_in_run_order_with_edges_and_what_a_waiting_step_waits_for(client, staff_operator):
    """Issue #15: steps were in payload order; a waiting step did not say what it waits for; no graph data."""
    queue = make("order-q")
    client.force_login(staff_operator)
    data = live(client, queue)
    ids = [s["id"] for s in data["steps"]]
    assert len(data["edges"]) == queue.edges.count() > 0
    for edge in data["edges"]:
        assert ids.index(edge["upstream"]) < ids.index(edge["downstream"])
        assert edge["kind"] in ("ready", "success") and edge["met"] is False
    builder = next(s for s in data["steps"] if s["target"] == "graph-builder")
    upstream_names = set(queue.steps.get(pk=builder["id"]).upstream_edges.values_list("upstream__name", flat=True))
    assert set(builder["waiting_for"]) == upstream_names and "waits for" in builder["cells"]["state"]
    page = client.get(reverse("admin:queues_queue_change", args=[queue.pk])).content.decode()
    rows = [int(pk) for pk in re.findall(r'data-sf-step="(\d+)" data-sf-cell="state"', page)]
    assert rows == ids  # the page's step table is in the same run order


def test_it_keeps_a_dependency_met_after_the_upstream_is_stopped(client, staff_operator):
    """Issue #15: after a stop every "Met" turned red, although the downstream had started."""
    queue = make("met-q")
    edge = queue.edges.filter(kind="ready").select_related("upstream", "downstream").first()
    run(edge.upstream)
    run(edge.downstream)
    services.queue_stop(queue=queue, user=staff_operator)
    client.force_login(staff_operator)
    data = live(client, queue)
    row = next(e for e in data["edges"] if (e["upstream"], e["downstream"]) == (edge.upstream_id, edge.downstream_id))
    assert row["met"] is True
    page = client.get(reverse("admin:queues_queue_change", args=[queue.pk])).content.decode()
    assert f'data-sf-edge="{edge.upstream_id}-{edge.downstream_id}"><span class="sf-met">' in page


def test_it_explains_a_queue_stopped_through_one_step(client, staff_operator):
    """Issue #15: a queue stopped through one step had an empty Message."""
    queue = make("one-step-q", "realtime-pipeline")
    steps = list(queue.steps.all())
    for step in steps:
        run(step)
    for step in steps:
        services.step_stop(step=step, user=staff_operator)
        step.refresh_from_db()
        step.transition(StepState.STOPPED, from_states=[StepState.STOPPING])
    services.queue_refresh_status(queue=queue)
    queue.refresh_from_db()
    client.force_login(staff_operator)
    data = live(client, queue)
    assert data["status"] == "stopped" and "Stop requested by operator" in data["message"]
    assert "Stop requested by operator" in client.get(LIST_URL).content.decode()


def test_it_uses_one_time_format_with_seconds_and_zone(client, staff_operator):
    """Issue #15: three time formats on one page (19:14:52, 7:14 p.m., 7:17:50 PM), no time zone."""
    queue = make("time-q")
    run(queue.steps.get(position=0))
    client.force_login(staff_operator)
    page = client.get(reverse("admin:queues_queue_change", args=[queue.pk])).content.decode()
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    # A 12-hour time stands on its own ("7 p.m.", "7:17:50 PM"); "…8PM…" inside a CSRF token is not one.
    twelve_hour = r"(?<![\w])\d{1,2}(?::\d\d){0,2}(?:\s| )?(?:a\.m\.|p\.m\.|(?:AM|PM)\b)"
    assert re.search(pattern, page) and not re.search(twelve_hour, page)
    step = queue.steps.get(position=0)
    step_page = client.get(reverse("admin:queues_queuerequest_change", args=[step.pk])).content.decode()
    assert re.search(pattern, step_page) and not re.search(twelve_hour, step_page)
    assert re.search(pattern, client.get(LIST_URL).content.decode())


def test_it_shows_counts_duration_and_last_failure_in_the_list_at_a_flat_cost(client, staff_operator):
    """Issue #15: the list had no running/failed counts, duration or failure reason; its cost must not grow."""
    queue = make("list-a")
    step = queue.steps.get(position=0)
    run(step)
    step.transition(StepState.FAILED, message="disk full")
    run(queue.steps.get(position=1))
    client.force_login(staff_operator)
    html = client.get(LIST_URL).content.decode()
    for column in ("column-step_progress", "column-duration", "column-last_message"):
        assert column in html
    assert "1 running · " in html and ">1 failed<" in html and f"{step.name}: disk full" in html
    with CaptureQueriesContext(connection) as few:
        client.get(LIST_URL)
    for n in range(12):
        make(f"list-more-{n}")
    with CaptureQueriesContext(connection) as many:
        assert client.get(LIST_URL).status_code == 200
    assert len(many) == len(few)


def test_it_confirms_bulk_actions_before_acting(client, staff_operator):
    """Issue #15: bulk Stop and bulk Retry acted with no confirmation."""
    a, b = make("bulk-a"), make("bulk-b")
    services.queue_stop(queue=b, user=staff_operator)
    client.force_login(staff_operator)
    response = client.post(LIST_URL, {"action": "stop_selected", "_selected_action": [a.pk, b.pk]})
    html = response.content.decode()
    assert response.status_code == 200 and "Stop these queues?" in html
    assert "will be stopped" in html and "skipped: already stopped" in html and 'name="post" value="yes"' in html
    a.refresh_from_db()
    assert a.stop_requested_at is None


def write_output(step: QueueRequest, text: str) -> None:
    folder = get_launcher("local").state_dir(step)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "output.log", "a", encoding="utf-8") as handle:
        handle.write(text)


def test_it_streams_a_step_log_by_offset_and_downloads_it_whole(client, staff_operator, settings):
    """Issue #15, logs: the step page reloaded whole every 5 s; no follow, download or search."""
    settings.JOB_LAUNCHER = "local"
    queue = make("log-q")
    step = queue.steps.get(position=0)
    run(step)
    (get_launcher("local").state_dir(step) / "output.log").unlink(missing_ok=True)  # left by an earlier run
    write_output(step, "first line\nsecond <line>\n")
    client.force_login(staff_operator)
    url = reverse("admin:queues_queuerequest_log", args=[step.pk])
    first = client.get(url, {"offset": 0}).json()
    assert first["text"] == "first line\nsecond <line>\n" and first["source"] == "file" and first["ended"] is False
    assert client.get(url, {"offset": first["next"]}).json()["text"] == ""
    write_output(step, "third line\n")
    second = client.get(url, {"offset": first["next"]}).json()
    assert second["text"] == "third line\n" and second["offset"] == first["next"]
    download = client.get(url, {"download": "1"})
    assert download["Content-Disposition"].startswith("attachment;")
    assert download.content.decode() == "first line\nsecond <line>\nthird line\n"
    assert client.get(url, {"offset": "x"}).status_code == 400
    page = client.get(reverse("admin:queues_queuerequest_change", args=[step.pk])).content.decode()
    for control in ('id="sf-log-follow"', 'id="sf-log-pause"', 'id="sf-log-search"', 'id="sf-log-download"'):
        assert control in page
    assert "second &lt;line&gt;" in page and 'http-equiv="refresh" content="5"' in page  # refresh only as <noscript>
    assert "location.reload" not in page


def test_it_serves_the_kept_tail_once_a_step_ended(client, staff_operator):
    """Issue #15, logs: a finished step's log is still readable through the same endpoint."""
    queue = make("log-ended-q")
    step = queue.steps.get(position=0)
    run(step)
    step.transition(StepState.SUCCEEDED, logs="kept 1\nkept 2\n")
    client.force_login(staff_operator)
    data = client.get(reverse("admin:queues_queuerequest_log", args=[step.pk]), {"offset": 0}).json()
    assert data == {**data, "source": "stored", "text": "kept 1\nkept 2\n", "ended": True, "more": False}


def test_it_offers_telemetry_charts_for_records_and_loss(client, staff_viewer):
    """Issue #15, charts: records written over time and the trainer's loss per epoch, drawn not listed."""
    queue = make("chart-q")
    trainer = queue.steps.get(target="gnn-trainer")
    run(trainer)
    for epoch in range(1, 4):
        TelemetryEvent.objects.create(
            queue=queue, step=trainer, event_key=f"chart-{epoch}", status="loading", records_written=epoch * 10,
            payload={"extra": {"epoch": epoch, "loss": 1 / epoch}},
        )  # fmt: skip
    client.force_login(staff_viewer)
    page = client.get(reverse("admin:queues_queuerequest_change", args=[trainer.pk]))
    html = page.content.decode()
    assert 'id="sf-chart-data"' in html and 'id="sf-charts"' in html
    data = re.search(r'<script id="sf-chart-data" type="application/json">(.*?)</script>', html).group(1)
    charts = {chart["title"]: chart for chart in json.loads(data)}
    assert charts["loss"]["x"] == "epoch" and [p[0] for p in charts["loss"]["points"]] == [1, 2, 3]
    assert [p[1] for p in charts["records written"]["points"]] == [10, 20, 30]


def test_it_shows_streaming_as_a_kind_not_as_a_failure_icon(client, staff_viewer):
    """Issue #15: "Streaming: no" was drawn as a red ✖ that reads like an error."""
    queue = make("kind-q")
    step = queue.steps.get(position=0)
    client.force_login(staff_viewer)
    html = client.get(reverse("admin:queues_queuerequest_change", args=[step.pk])).content.decode()
    assert '<span class="sf-tag">batch</span>' in html and "icon-no.svg" not in html


def test_it_marks_where_the_payload_json_is_broken(client, staff_operator):
    """Issue #15, start page: an invalid-JSON error gave line/column but did not mark the spot."""
    client.force_login(staff_operator)
    text = '{\n  "symbol": "BTCUSDT",\n  "requests": [oops]\n}'
    response = client.post("/admin/queues/queue/start/", {"payload": text})
    html = response.content.decode()
    assert "line 3, column 16" in html
    assert '<pre class="sf-json-error" id="sf-json-error">  &quot;requests&quot;: [<mark>o</mark>ops]</pre>' in html
    assert f"var errorAt = {text.index('oops')};" in html


def test_the_timeline_shows_a_retried_steps_earlier_runs_not_a_wait(client, staff_operator):
    """Found in `make run`: after a retry, a step's timeline row was grey ("waiting") from the queue's
    creation to the new launch — over the minute its first run ran and was stopped. The live JSON now
    carries each step's ended runs (from their StepRun records) for the timeline to draw, and the
    current run waits from its retry on; a queue never retried pays no query for it."""
    queue = make("retried-timeline", "realtime-pipeline")
    step = queue.steps.get(position=0)
    run(step)
    client.force_login(staff_operator)
    with CaptureQueriesContext(connection) as before:
        first = live(client, queue)
    assert all(s["past_runs"] == [] for s in first["steps"])
    step.refresh_from_db()
    step.transition(StepState.STOPPED, finished_at=timezone.now())
    services.queue_refresh_status(queue=queue)
    assert services.queue_retry(queue=queue) >= 1

    with CaptureQueriesContext(connection) as after:
        data = live(client, queue)
    row = next(s for s in data["steps"] if s["id"] == step.pk)
    assert row["run"] == 2
    [past] = row["past_runs"]
    assert past["run"] == 1 and past["state"] == StepState.STOPPED
    assert past["started_at"] and past["finished_at"] and past["retried_at"] >= past["finished_at"]
    assert len(after) == len(before) + 1  # the ended runs, in one query for the whole queue
