"""The operators' console in a real browser (issue #15 §11): start, watch live, follow a log, stop, retry, bulk, layout.

State changes are driven from the test through the services and telemetry ingestion, as workers would;
the page must show them without a reload.
"""
from __future__ import annotations

import json

import pytest
from django.utils import timezone

from jobs.launchers import get_launcher
from jobs.telemetry import ingest_events
from jobs import services
from queues.models import Queue, QueueRequest, StepState
from tests.queues.factories import make_queue, payload

pytestmark = [pytest.mark.django_db(transaction=True)]


def launch(step: QueueRequest) -> None:
    """What the launcher and the worker's first event do: the step runs."""
    step.transition(StepState.LAUNCHING, launched_at=timezone.now())
    ingest_events([{"queue_id": step.queue.queue_id, "producer": step.telemetry_id, "status": "started"}], source="http")


def report(step: QueueRequest, **fields) -> None:
    event = {"queue_id": step.queue.queue_id, "producer": step.telemetry_id, "status": "loading", **fields}
    ingest_events([event], source="http")


def node(page, step: QueueRequest):
    return page.locator(f'#sf-dag [data-sf-dag-node="{step.pk}"]')


def start_from_template(page, template: str) -> Queue:
    page.goto("/admin/queues/queue/start/")
    page.select_option("#id_template", template)
    assert json.loads(page.input_value("#id_payload")) == payload(template)
    page.click("input[type=submit][value='Start queue']")
    page.wait_for_selector("#sf-dag svg")
    return Queue.objects.get()


def test_it_starts_a_queue_from_a_template_and_shows_dag_and_timeline_changing_live(page):
    queue = start_from_template(page, "historical-pipeline")
    steps = list(queue.steps.all())
    page.wait_for_function("n => document.querySelectorAll('#sf-dag [data-sf-dag-node]').length === n", arg=len(steps))
    assert page.locator("#sf-dag .sf-edge").count() == queue.edges.count()
    assert page.locator("#sf-timeline [data-sf-timeline-row]").count() == len(steps)
    consumer = queue.steps.get(target="arango-connector", type="api_candles_5m")
    assert node(page, consumer).get_attribute("data-sf-state") == "launching"  # launched on submission

    launch(consumer)
    services.queue_refresh_status(queue=queue)
    page.wait_for_selector(f'#sf-dag [data-sf-dag-node="{consumer.pk}"][data-sf-state="running"]')
    page.wait_for_selector(f'#sf-timeline [data-sf-timeline-row="{consumer.pk}"] [data-sf-segment="running"]')
    edge = queue.edges.filter(upstream=consumer).first()
    page.wait_for_selector(f'#sf-dag [data-sf-dag-edge="{consumer.pk}-{edge.downstream_id}"][data-sf-met="yes"]', state="attached")
    page.wait_for_selector(f'[data-sf-step="{consumer.pk}"][data-sf-cell="state"] >> text=running')
    page.wait_for_selector('[data-sf-queue-cell="progress"] >> text=2 running')  # both first steps were launched

    other = queue.steps.exclude(pk=consumer.pk).get(state=StepState.LAUNCHING)
    launch(other)
    report(other, status="finished")
    page.wait_for_selector(f'[data-sf-step="{other.pk}"][data-sf-cell="state"] >> text=succeeded')
    page.wait_for_selector(f'[data-sf-queue-cell="progress"] >> text=1/{len(steps)} succeeded')  # counts change live

    href = node(page, consumer).get_attribute("href")
    node(page, consumer).click()
    page.wait_for_url(f"**{href}")
    assert page.locator("h1, .breadcrumbs").first.is_visible()


def test_it_follows_a_log_searches_pauses_and_offers_the_download(page, settings):
    settings.JOB_LAUNCHER = "local"
    queue = make_queue(queue_id="browser-log-q", first_advance=False)
    step = queue.steps.get(position=0)
    launch(step)
    folder = get_launcher("local").state_dir(step)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "output.log").write_text("booting worker\n")
    page.goto(f"/admin/queues/queuerequest/{step.pk}/change/")
    page.wait_for_selector("#sf-logs >> text=booting worker")
    with open(folder / "output.log", "a") as handle:
        handle.write("loaded 500 records\n")
    page.wait_for_selector("#sf-logs >> text=loaded 500 records")  # streamed, no reload
    page.fill("#sf-log-search", "records")
    page.wait_for_selector("#sf-logs mark")
    assert page.inner_text("#sf-log-matches") == "1 match"
    page.click("#sf-log-pause")
    assert page.get_attribute("#sf-log-pause", "aria-pressed") == "true"
    assert page.get_attribute("#sf-log-download", "href").endswith("?download=1")


def test_it_stops_and_retries_a_queue_from_its_page(page):
    queue = make_queue(queue_id="browser-stop-q", first_advance=False)
    first = queue.steps.get(target="arango-connector", type="api_candles_5m")
    launch(first)
    services.queue_refresh_status(queue=queue)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"/admin/queues/queue/{queue.pk}/change/")
    page.wait_for_selector(f'#sf-dag [data-sf-dag-node="{first.pk}"][data-sf-state="running"]')
    page.click("text=Stop queue")
    page.wait_for_selector(".messagelist >> text=Stop requested for browser-stop-q")
    first.refresh_from_db()
    first.transition(StepState.STOPPED, from_states=[StepState.STOPPING])  # the worker obeyed
    services.queue_refresh_status(queue=queue)
    page.wait_for_selector('[data-sf-queue-button="retry"]:not([hidden])')  # appears live
    page.click("text=Retry failed/stopped steps")
    page.wait_for_selector(".messagelist >> text=Retrying")
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.WAITING}
    # Its timeline row: the stopped first run, faded, then the new run waiting from the retry on.
    row = f'#sf-timeline [data-sf-timeline-row="{first.pk}"]'
    page.wait_for_selector(f'{row} [data-sf-segment="run 1 stopped"]', state="attached")
    ended = page.locator(f'{row} [data-sf-segment="run 1 stopped"]')
    waiting = page.locator(f'{row} [data-sf-segment="waiting"]')
    assert float(waiting.get_attribute("x")) >= float(ended.get_attribute("x")) + float(ended.get_attribute("width")) - 0.5


def test_it_confirms_a_bulk_stop_on_a_page_listing_the_queues(page):
    a = make_queue(queue_id="browser-bulk-a", first_advance=False)
    make_queue(queue_id="browser-bulk-b", first_advance=False)
    page.goto("/admin/queues/queue/")
    page.check(f'input.action-select[value="{a.pk}"]')
    page.select_option("select[name=action]", "stop_selected")
    page.click("button[name=index]")
    page.wait_for_selector("text=Stop these queues?")
    assert page.locator("#sf-bulk-rows tbody tr").count() == 1
    a.refresh_from_db()
    assert a.stop_requested_at is None
    page.click("input[type=submit][value='Stop 1 queue']")
    page.wait_for_selector(".messagelist >> text=Stop requested for 1 queue(s).")


def test_it_lists_every_payload_error(page):
    data = payload()
    data["requests"][0]["target"] = "nope"
    del data["requests"][4]["collection_output"]
    page.goto("/admin/queues/queue/start/")
    page.fill("#id_payload", json.dumps(data))
    page.click("input[type=submit][value='Start queue']")
    page.wait_for_selector("#payload-errors")
    errors = page.inner_text("#payload-errors")
    assert "requests[0].target" in errors and "requests[4].collection_output" in errors
    assert Queue.objects.count() == 0


@pytest.mark.parametrize("width", [1440, 800])
def test_it_keeps_the_list_and_pages_readable_at(page, width):
    queue = make_queue(queue_id="btcusdt-api-candles-5m-20240601-layout1", first_advance=False)
    step = queue.steps.get(position=0)
    launch(step)
    services.queue_refresh_status(queue=queue)
    page.set_viewport_size({"width": width, "height": 1000})
    page.goto("/admin/queues/queue/")
    for column in ("queue_id", "status_badge", "step_progress"):
        box = page.locator(f"#result_list td.field-{column}, #result_list th.field-{column}").first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, column
    if width == 1440:  # nothing clipped: the table fits its box
        assert page.evaluate("() => { const r = document.querySelector('#changelist .results');"
                             " return r.scrollWidth <= r.clientWidth; }")
    for url in (f"/admin/queues/queue/{queue.pk}/change/", f"/admin/queues/queuerequest/{step.pk}/change/"):
        page.goto(url)
        title = page.locator("#content h1").first.bounding_box()
        for tool in page.locator("#content .object-tools li:visible").all():
            box = tool.bounding_box()
            overlaps = not (box["y"] >= title["y"] + title["height"] or box["y"] + box["height"] <= title["y"]
                            or box["x"] >= title["x"] + title["width"] or box["x"] + box["width"] <= title["x"])
            assert not overlaps, f"{url}: a button covers the title"


def test_it_marks_broken_json_and_forgets_the_template_once_edited(page):
    page.goto("/admin/queues/queue/start/?template=realtime-pipeline")
    assert page.input_value("#id_template") == "realtime-pipeline"
    page.locator("#id_payload").press("End")
    page.locator("#id_payload").type(" ")
    assert page.input_value("#id_template") == ""  # the payload is no longer the template
    page.fill("#id_payload", '{"symbol": "BTCUSDT", "requests": [oops]}')
    page.click("input[type=submit][value='Start queue']")
    page.wait_for_selector("#sf-json-error mark")
    selected = page.evaluate("() => { const t = document.getElementById('id_payload');"
                             " return t.value.slice(t.selectionStart, t.selectionEnd); }")
    assert selected == "o" and page.evaluate("() => document.activeElement.id") == "id_payload"
