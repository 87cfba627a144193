"""Issue #15 §7 and §9 in a real browser: the queue page's History panel updates live; ReDoc works offline
with the catalogue text intact."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from jobs import services
from queues.history import Origin
from queues.models import StepState
from tests.queues.factories import make_queue

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_it_shows_each_action_in_the_history_panel_live(page):
    """§7 the queue page's History panel: a stop from Kafka appears without a reload; the page's own stop too."""
    queue = make_queue(queue_id="browser-history-q", first_advance=False)
    first = queue.steps.get(target="arango-connector", type="api_candles_5m")
    first.transition(StepState.RUNNING, launched_at=timezone.now(), started_at=timezone.now())
    services.queue_refresh_status(queue=queue)
    page.goto(f"/admin/queues/queue/{queue.pk}/change/")
    page.wait_for_selector("#sf-history >> text=start")

    services.step_stop(step=first, reason="Stop command from Kafka.", origin=Origin(source="kafka", command_id="c-browser-9"))
    page.wait_for_selector("#sf-history >> text=kafka command c-browser-9")  # live, no reload
    assert "step stop " + first.name in page.inner_text("#sf-history")

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("text=Stop queue")
    page.wait_for_selector(".messagelist >> text=Stop requested for browser-history-q")
    row = page.locator("#sf-history tbody tr").first
    assert "browser-operator" in row.inner_text() and "accepted" in row.inner_text()
    page.click("#sf-history-panel >> text=all of it")
    page.wait_for_selector("#sf-audit-history >> text=stop by browser-operator")


def test_it_serves_redoc_without_any_request_off_the_server(page, live_server):
    """§9 ReDoc fully offline (no logo or font from a CDN) and `api_candles_<interval>` shown as text."""
    local = urlsplit(live_server.url).netloc
    elsewhere: list[str] = []

    def only_local(route):
        if urlsplit(route.request.url).netloc in (local, ""):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto("/api/redoc/")
    page.wait_for_selector("h1 >> text=StreamForge Queue Manager API")
    page.wait_for_load_state("networkidle")
    assert elsewhere == []
    page.get_by_text("api_candles_<interval>").first.wait_for(state="attached")
