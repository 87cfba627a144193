"""List and admin figures: Django's test client in-process, as a logged-in superuser, against the history.

Each page is timed beside the bare read of the same rows (`Queue.objects.values()` sliced as the page,
JSON-encoded): what a page of that size costs with nothing but the ORM.
"""
from __future__ import annotations

import json

from benchmarks import targets
from benchmarks.harness import count_queries, emit, sample


_API_SAMPLES = 200


def _client():
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def _token_client(user):
    """The normal machine client: `Authorization: Token <key>` instead of a session cookie."""
    from django.test import Client
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


def _get(client, path):
    def fetch():
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status_code}")
        return response

    return fetch


def _bare(offset: int, size: int = 50, **filters):
    from django.core.serializers.json import DjangoJSONEncoder

    Queue = targets.models().Queue

    def read():
        rows = list(Queue.objects.filter(**filters).values()[offset:offset + size])
        return json.dumps(rows, cls=DjangoJSONEncoder)

    return read


def run(ctx) -> None:
    client = _client()
    token_client = _token_client(client.user)
    m = targets.models()
    scale = ctx.scale_label
    first_active = m.Queue.objects.filter(status="running").order_by("-created_at").values_list("pk", flat=True)[0]
    pages = [
        ("api_list_first_page", targets.API_QUEUE_LIST, _bare(0), "p95 <= 20 ms and <= 2x baseline"),
        # The same page for a token-authenticated client (no session; the token and its user in one query).
        ("api_list_first_page_token", targets.API_QUEUE_LIST, _bare(0), "p95 <= 20 ms and <= 2x baseline"),
        ("api_list_page_1000", f"{targets.API_QUEUE_LIST}?page=1000", _bare(49_950), "<= 2x baseline (deep pages by cursor)"),
        ("api_list_filtered_status", f"{targets.API_QUEUE_LIST}?status=running", _bare(0, status="running"),
         "p95 <= 20 ms and <= 2x baseline"),
        ("api_list_filtered_symbol", f"{targets.API_QUEUE_LIST}?symbol=ETHUSDT", _bare(0, symbol="ETHUSDT"),
         "p95 <= 20 ms and <= 2x baseline"),
        ("api_list_filtered_target", f"{targets.API_QUEUE_LIST}?target=gnn-trainer",
         _bare(0, pk__in=m.QueueRequest.objects.filter(target="gnn-trainer").values("queue_id")),
         "p95 <= 20 ms and <= 2x baseline"),
        # The same rows as the list shows: one page of the admin's list_per_page.
        ("admin_queue_list", targets.ADMIN_QUEUE_LIST, _bare(0, size=_admin_list_per_page()), "p95 <= 100 ms"),
        ("admin_queue_page", targets.admin_queue_page(first_active), _bare_queue_page(first_active),
         "query count independent of history (none stated for time)"),
    ]
    if ctx.quick:
        pages[2] = ("api_list_page_last", f"{targets.API_QUEUE_LIST}?page={max(1, m.Queue.objects.count() // 50)}",
                    _bare(max(0, m.Queue.objects.count() // 50 - 1) * 50), "<= 2x baseline (deep pages by cursor)")
    for figure, path, bare, target in pages:
        if not ctx.wants(figure):
            continue
        by = token_client if figure.endswith("_token") else client
        # The API pages' target is a p95: 200 requests (and as many bare reads) rather than 30, so one
        # scheduling hiccup on a shared machine is not the figure; the admin figures keep 30.
        samples = _API_SAMPLES if figure.startswith("api_list") else 30
        try:
            measured = sample(_get(by, path), at_most=samples, budget_s=ctx.budget_s)
            base = sample(bare, at_most=max(50, samples), budget_s=max(5, ctx.budget_s / 2))
            queries = count_queries(_get(by, path))
        except Exception as exc:  # one broken page must not hide the other figures
            emit(figure, value=None, unit="ms", baseline="bare values()+json", baseline_value=None, scale=scale,
                 target=target, meets=False, error=f"{type(exc).__name__}: {exc}"[:300])
            continue
        meets = _meets(figure, measured, base)
        emit(figure, value=measured.p95 if "p95" in target else measured.p50, unit="ms",
             baseline="bare values()+json of the same rows", baseline_value=base.p95 if "p95" in target else base.p50,
             scale=scale, target=target, meets=meets, p50_ms=measured.p50, p95_ms=measured.p95,
             samples=len(measured.ms), queries=queries, path=path)


def _admin_list_per_page() -> int:
    from console.admin.queue import QueueAdmin

    return QueueAdmin.list_per_page


def _meets(figure: str, measured, base) -> bool | None:
    if figure.startswith("api_list_page"):
        return measured.p50 <= 2 * base.p50
    if figure.startswith("api_list"):
        return measured.p95 <= 20 and measured.p95 <= 2 * base.p95
    if figure == "admin_queue_list":
        return measured.p95 <= 100
    return None


def _bare_queue_page(pk: int):
    from django.core.serializers.json import DjangoJSONEncoder

    m = targets.models()

    def read():
        queue = m.Queue.objects.filter(pk=pk).values().get()
        steps = list(m.QueueRequest.objects.filter(queue_id=pk).values())
        edges = list(m.StepDependency.objects.filter(queue_id=pk).values())
        events = list(m.TelemetryEvent.objects.filter(queue_id=pk).values()[:50])
        return json.dumps([queue, steps, edges, events], cls=DjangoJSONEncoder)

    return read
