"""The whole API fuzzed from its own OpenAPI schema (issue #10 §4): no request is answered with a 500.

Schemathesis generates requests, valid and invalid, for every operation of `/api/schema/` and sends
them through Django's WSGI application (all middleware, real PostgreSQL). Seeded and bounded so the
run is the same every time and short enough for CI; a failure prints the request that caused it.
"""
from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.db import transaction
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, Phase, settings

from tests.queues.factories import UserFactory, make_queue

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 25
FUZZ_QUEUE_ID = "fuzz-q"
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,  # the same examples on every run
    database=None,  # nothing remembered between runs either
    deadline=None,  # no timed assertions: the machine is shared
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing request is reported
    suppress_health_check=list(HealthCheck),
)


def _config():
    config = schemathesis.config.SchemathesisConfig()
    config.projects.default.generation.update(max_examples=EXAMPLES_PER_OPERATION, deterministic=True)
    # Schema examples and boundary cases first, then generated ones; a stateful run would not be bounded.
    config.projects.default.phases.update(phases=["examples", "coverage", "fuzzing"])
    return config


@pytest.fixture
def superuser_token():
    from rest_framework.authtoken.models import Token

    user = UserFactory(username="fuzz-admin", is_superuser=True, is_staff=True)
    return Token.objects.create(user=user).key


@pytest.fixture
def fuzz_queue():
    """A real queue, so that path parameters can also name something that exists."""
    return make_queue(queue_id=FUZZ_QUEUE_ID)


@pytest.fixture
def wsgi_app():
    """Django's WSGI application, keeping the test's database connection between requests.

    A request's end closes old connections, which would end the test's transaction; Django's own
    test client disconnects the same handler for the same reason.
    """
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(superuser_token, wsgi_app):
    return schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json",
        wsgi_app,
        headers={"Authorization": f"Token {superuser_token}"},
        config=_config(),
    )


schema = schemathesis.pytest.from_fixture("api_schema")


def _call(case, **kwargs):
    """Send the request in a savepoint of the test's transaction, rolled back after a server error
    so that one failure does not abort the database work of every request after it."""
    savepoint = transaction.savepoint()
    response = case.call(**kwargs)
    if response.status_code >= 500:
        transaction.savepoint_rollback(savepoint)
    else:
        transaction.savepoint_commit(savepoint)
    return response


def _on_existing_objects(case, queue):
    """The same request with its path naming the fuzz queue and one of its steps (else mostly 404s)."""
    params = dict(case.path_parameters or {})
    if "queue_id" not in params:
        return None
    params["queue_id"] = queue.queue_id
    if "name" in params:
        params["name"] = queue.steps.order_by("position").values_list("name", flat=True).first()
    return params


@schema.parametrize()
@FUZZ_SETTINGS
def test_it_never_answers_a_superuser_with_a_server_error(case, superuser_token, fuzz_queue):
    """Issue #10 §4 (fuzzing): logged in with every permission, no generated request gets a status >= 500."""
    headers = {"Authorization": f"Token {superuser_token}"}
    response = _call(case, headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}\n{response.text[:2000]}"
    params = _on_existing_objects(case, fuzz_queue)
    if params is not None:
        case.path_parameters = params
        response = _call(case, headers=headers)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}\n{response.text[:2000]}"


def _refused_before_any_view_reads_data(path: str) -> bool:
    """A 404 that no data decided: the URL resolver found no route, or DRF refused an unknown
    format suffix (`/api/templates/0.5/` is template `0` as format `5`) before authenticating."""
    try:
        match = resolve(path.split("?", 1)[0])
    except Resolver404:
        return True
    return "format" in match.kwargs


@schema.parametrize()
@settings(FUZZ_SETTINGS, max_examples=5)
def test_it_gives_anonymous_callers_nothing(case, fuzz_queue):
    """Issue #10 §4 (fuzzing, anonymous): without credentials every routed operation is refused (401/403)."""
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "cookie")}
    params = _on_existing_objects(case, fuzz_queue)
    if params is not None:
        case.path_parameters = params
    response = _call(case)
    if response.status_code == 404 and _refused_before_any_view_reads_data(case.formatted_path):
        return
    assert response.status_code in (401, 403), f"{case.method} {case.formatted_path}: {response.status_code}"
    assert FUZZ_QUEUE_ID not in response.text
