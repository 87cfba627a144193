"""The admin queue list at production scale (issue #12): its rows cost the same whatever the page or
history size, and look exactly as Django's generic list rendering would draw them.

The figures themselves (milliseconds) belong in `make bench` (`admin_queue_list`); these tests pin the
behaviour that keeps them flat: no per-row template or URL resolution, the same cells, exact counts.
"""
from __future__ import annotations

import re

import pytest
from django.contrib.admin.templatetags import admin_list
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.db import connection
from django.urls import resolve, reverse
from django.utils import timezone

from console.admin.queue import QueueAdmin
from jobs import services, submission
from queues.models import Queue, QueueRequest, StepState
from tests.queues.factories import payload

pytestmark = pytest.mark.django_db

LIST_URL = "/admin/queues/queue/"


def make(queue_id: str) -> Queue:
    queue, _ = submission.queue_create(payload=payload(), queue_id=queue_id)
    return queue


def _rendered(client, query: dict | None = None):
    """The list's response with the templates rendered and the URL reversals made while producing it."""
    import django.urls.base as urls_base

    calls = []
    original = urls_base.reverse

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("viewname"))
        return original(*args, **kwargs)

    urls_base.reverse = counting
    try:
        response = client.get(LIST_URL, query or {})
    finally:
        urls_base.reverse = original
    assert response.status_code == 200
    return response, calls


def test_it_renders_the_list_with_templates_and_reversals_independent_of_the_rows(client, staff_operator):
    """Issue #12 (admin list p95 <= 100 ms; the time was template rendering): each row's checkbox was a
    form widget rendered through three templates and each row's link a URL reversal, so the work
    grew with the page. Now both are made once per page."""
    for n in range(2):
        make(f"few-{n}")
    client.force_login(staff_operator)
    few, few_reversals = _rendered(client)
    for n in range(12):
        make(f"more-{n}")
    many, many_reversals = _rendered(client)
    assert len(re.findall(r'class="action-select"', many.content.decode())) == 14
    assert len(many.templates) == len(few.templates)
    assert len(many_reversals) == len(few_reversals)


def _django_rows(request, admin) -> list[str]:
    """What Django's own list rendering draws for the same page: the reference the rows must match."""
    changelist = admin.get_changelist_instance(request)
    return ["".join(str(cell) for cell in admin_list.items_for_result(changelist, queue, None))
            for queue in changelist.result_list]


def _timeless(row: str) -> str:
    # A running queue's duration ticks between the two renderings; the cell itself must still be there.
    return re.sub(r'(data-sf-queue-cell="duration">)[^<]*', r"\1", row)


def test_it_draws_the_same_cells_and_links_as_django_would(client, staff_operator):
    """Issue #12: the cheaper rows keep every column, CSS class, link (with the filters kept) and the
    checkbox the bulk actions read — cell for cell what Django's generic rendering produced."""
    queue = make("same-a")
    step = queue.steps.get(position=0)
    now = timezone.now()
    step.transition(StepState.RUNNING, launched_at=now, started_at=now)
    step.transition(StepState.FAILED, message="disk <full> & more")
    services.queue_refresh_status(queue=queue)
    make("same-b")
    from django.contrib import admin as django_admin

    admin = QueueAdmin(Queue, django_admin.site)
    for query in ({}, {"status__exact": "running"}, {"q": "same", "o": "-2"}):
        request = RequestFactory().get(LIST_URL, query)
        request.user, request.resolver_match = staff_operator, resolve(LIST_URL)  # the filters kept in links
        expected = _django_rows(request, admin)
        client.force_login(staff_operator)
        html = client.get(LIST_URL, query).content.decode()
        body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
        rows = [row.strip() for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
        assert rows and [_timeless(row) for row in rows] == [_timeless(row) for row in expected], query
    assert "_changelist_filters=status__exact%3Drunning" in client.get(LIST_URL, {"status__exact": "running"}).content.decode()
    assert reverse("admin:queues_queue_change", args=[queue.pk]) in html


def test_it_keeps_counts_and_the_last_failure_exact_with_one_query_for_the_page(client, staff_operator):
    """Issue #12 (progress and counts that the list shows stay exact): each row's counts are its own
    steps', whatever the page size, in a number of queries independent of the rows shown."""
    queues = [make(f"exact-{n}") for n in range(3)]
    for n, queue in enumerate(queues):
        QueueRequest.objects.filter(queue=queue, position__lt=n + 1).update(state=StepState.SUCCEEDED)
    failed = queues[2].steps.get(position=5)
    failed.transition(StepState.FAILED, message="out of memory")
    client.force_login(staff_operator)
    with CaptureQueriesContext(connection) as few:
        html = client.get(LIST_URL).content.decode()
    for n, queue in enumerate(queues):
        total = queue.steps.count()
        succeeded = n + 1
        row = html.split(f">{queue.queue_id}</a>", 1)[1].split("</tr>", 1)[0]
        assert f"{succeeded}/{total} succeeded" in row
        assert ">1 failed<" in row if n == 2 else ">0 failed<" in row
    assert f"{failed.name}: out of memory" in html
    for n in range(5):
        make(f"exact-more-{n}")
    with CaptureQueriesContext(connection) as many:
        client.get(LIST_URL)
    assert len(many) == len(few)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/St_Johns"])
def test_it_formats_times_exactly_as_djangos_date_format(zone):
    """Issue #12: the console's time format now goes through strftime (Django's formatter parsed the
    format for every row); the text must stay Django's, zone name included, in summer and winter."""
    from datetime import datetime, timezone as dt_timezone

    from django.utils import formats

    from console.admin import display

    with timezone.override(zone):
        for value in (datetime(2024, 1, 5, 3, 4, 5, tzinfo=dt_timezone.utc),
                      datetime(2024, 7, 31, 23, 59, 59, 999999, tzinfo=dt_timezone.utc), timezone.now()):
            expected = formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")
            assert display.when(value) == expected
