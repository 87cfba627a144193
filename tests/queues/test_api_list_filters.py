"""The queue list's filters (status, symbol, target, created range) answer what django-filter's
`QueueFilter` answers: the same rows for valid values, the same 400 with the same field messages for
invalid ones, alone and combined, in the cursor, page-number and legacy forms (issue #12, filtered
pages: the backend validates and applies the named filters without a FilterSet and form per request).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.http import QueryDict
from django.utils import timezone
from django_filters.utils import translate_validation

from api.filters import QueueFilter
from api.serializers import list_rows
from queues.models import Queue, QueueStatus
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db

VALID = (
    "status=running", "status=running&status=failed", "status=failed&status=failed",
    "&".join(f"status={s}" for s in QueueStatus.values),  # every status: django-filter's no-op
    "symbol=ethusdt", "symbol=%20ETHUSDT%20", "symbol=", "symbol=NOPE",
    "target=gnn-trainer", "target=visualizer", "target=",
    "created_after=2000-01-01", "created_after={since}", "created_before={since}",
    "created_after={since_berlin}", "created_before={since_naive}", "created_after=",
    "status=running&symbol=ethusdt&target=loader-producer&created_after=2000-01-01T00:00:00Z&created_before={since}",
    "status=failed&target=visualizer", "symbol=BTCUSDT&symbol=ETHUSDT", "unknown=1&status=pending",
)
INVALID = (
    "status=nope", "status=", "status=running&status=nope", "target=nope", "target=gnn-trainer&target=nope",
    "symbol=a%00b", "created_after=yesterday", "created_before=2024-13-01T00:00:00Z",
    "created_after=9999-12-31T23:59:59-23:00", "created_before=0001-01-01T00:00:00%2B23:00",
    "created_before=nope&target=nope&created_after=x&symbol=%00&status=nope",  # every field, out of order
)


@pytest.fixture
def history():
    now = timezone.now()
    for i in range(7):
        queue = make_queue("historical-pipeline" if i % 2 else "realtime-pipeline", queue_id=f"flt-{i}",
                           **({"symbol": "ETHUSDT"} if i % 3 == 0 else {}))
        Queue.objects.filter(pk=queue.pk).update(created_at=now - timedelta(days=i),
                                                 status=[QueueStatus.RUNNING, QueueStatus.FAILED][i % 2])
    since = now - timedelta(days=3, hours=1)
    return {"since": since.isoformat().replace("+", "%2B"),
            "since_berlin": since.astimezone(timezone.get_fixed_timezone(60)).isoformat().replace("+", "%2B"),
            "since_naive": since.replace(tzinfo=None).isoformat()}


def _reference(query: str):
    """django-filter's own answer: (400 body, None) or (None, the queue ids in list order)."""
    filterset = QueueFilter(data=QueryDict(query), queryset=list_rows())
    if not filterset.is_valid():
        return translate_validation(filterset.errors).detail, None
    return None, [row.queue_id for row in filterset.qs]


def _walk(api, url: str) -> list[str]:
    seen = []
    while url:
        response = api.get(url)
        assert response.status_code == 200, (url, response.content)
        body = response.json()
        seen += [row["queue_id"] for row in body["results"]]
        url = body["next"]
    return seen


@pytest.mark.parametrize("query", VALID)
def test_it_lists_the_rows_django_filter_selects(api, history, query):
    query = query.format(**history)
    _, expected = _reference(query)
    assert expected is not None, query
    assert _walk(api, f"/api/queues/?{query}&page_size=2") == expected  # cursor pages
    assert _walk(api, f"/api/queues/?{query}&page=1&page_size=3") == expected  # page-number form
    assert _walk(api, f"/queues/list?{query}&page_size=2") == expected  # legacy


def test_the_reference_filters_select_rows(history):
    """The valid queries above are not all vacuous: they select different, non-empty sets."""
    selections = {tuple(_reference(query.format(**history))[1]) for query in VALID}
    assert len(selections) >= 8 and () in selections


@pytest.mark.parametrize("query", INVALID)
def test_it_refuses_what_django_filter_refuses_with_the_same_400(api, history, query):
    expected, _ = _reference(query)
    assert expected
    for url in (f"/api/queues/?{query}", f"/api/queues/?{query}&page=1", f"/queues/list?{query}"):
        response = api.get(url)
        assert response.status_code == 400, (url, response.content)
        assert list(response.json().items()) == [(k, [str(m) for m in v]) for k, v in expected.items()], url


def test_it_words_each_field_error_as_before(api):
    body = api.get("/api/queues/?created_before=nope&target=nope&created_after=9999-12-31T23:59:59-23:00"
                   "&symbol=%00&status=nope").json()
    assert body == {
        "status": ["Select a valid choice. nope is not one of the available choices."],
        "symbol": ["Null characters are not allowed."],
        "target": ["Select a valid choice. nope is not one of the available choices."],
        "created_after": ["Out of range once converted to UTC."],
        "created_before": ["Enter a valid date/time."],
    }
    assert list(body) == ["status", "symbol", "target", "created_after", "created_before"]


def test_a_filtered_request_builds_no_filterset_or_form(api, history, monkeypatch):
    """Issue #12 (`api_list_filtered_*`): each filtered request built a `QueueFilter` and its form,
    deep-copying every filter and every form field (most of the filters' ~0.3 ms of Python per request
    on a quiet machine). Now the named filters' own fields and filters, made once per process, run."""
    from django_filters import FilterSet
    from django import forms

    api.get("/api/queues/?status=running")  # the process's first filtered request makes them
    built = []
    for cls in (FilterSet, forms.Form):
        monkeypatch.setattr(cls, "__init__", _recording(cls.__init__, built))
    for query in ("status=running&target=visualizer&symbol=ethusdt&created_after=2000-01-01", "status=nope"):
        assert api.get(f"/api/queues/?{query}").status_code in (200, 400)
    assert built == []


def _recording(init, built: list):
    def recorded(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    return recorded


def test_the_browsable_api_still_draws_the_filter_form(api, history):
    """The FilterSet class still draws the browsable API's form (and describes the schema's parameters)."""
    response = api.get("/api/queues/?status=running&symbol=ethusdt", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("status", "symbol", "target", "created_after", "created_before"):
        assert f'name="{name}"' in html, name
    assert 'value="ethusdt"' in html
