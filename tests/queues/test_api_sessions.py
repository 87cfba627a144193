"""Session-authenticated API requests at production scale (issue #12, `api_list_*`): the session is read
from Redis rather than PostgreSQL on every request, and nothing about logging in or out changes; a
flushed or unreachable Redis costs a database read, never a login.
"""
from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

PASSWORD = "pw-operator-123!"  # tests/fixtures.py


def _logged_in(user) -> Client:
    """A browser that logged in through the admin's login form (the session is made as in production)."""
    client = Client()
    response = client.post("/admin/login/", {"username": user.username, "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302, response.content
    return client


def _tables_read(client, status=200) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/queues/")
    assert response.status_code == status, response.content
    return [q["sql"] for q in captured.captured_queries]


def _session_reads(sqls) -> int:
    return sum('FROM "django_session"' in sql for sql in sqls)


def test_a_logged_in_request_reads_its_session_from_redis(staff_operator):
    """Issue #12 (API pages: the session look-up was a PostgreSQL query on every request): the session
    comes from Redis; the user is still read from the database (deactivation, password change)."""
    client = _logged_in(staff_operator)
    sqls = _tables_read(client)
    assert _session_reads(sqls) == 0, sqls
    # The user's own row (the page's rows look up their submitters' usernames inside the page query).
    assert sum(sql.startswith('SELECT "auth_user".') for sql in sqls) == 1, sqls


def test_a_logout_ends_the_session_for_its_cookie(staff_operator):
    """Issue #12 (logout must still work with sessions cached): the old cookie is refused afterwards."""
    client = _logged_in(staff_operator)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    _tables_read(client)
    assert client.post("/admin/logout/").status_code == 200
    assert not Session.objects.filter(session_key=cookie).exists()
    client.cookies[settings.SESSION_COOKIE_NAME] = cookie
    _tables_read(client, status=401)


def test_a_user_deactivated_after_login_is_refused_at_once(staff_operator):
    """Issue #12 (authentication stays exactly as before): a cached session does not keep a
    deactivated user in; the user is checked on every request."""
    client = _logged_in(staff_operator)
    _tables_read(client)
    staff_operator.is_active = False
    staff_operator.save(update_fields=["is_active"])
    _tables_read(client, status=401)


def test_a_flushed_redis_falls_back_to_the_database(staff_operator):
    """Issue #12 (the session must survive a Redis flush): the next request reads PostgreSQL once and
    puts the session back in Redis."""
    client = _logged_in(staff_operator)
    caches[settings.SESSION_CACHE_ALIAS].clear()
    assert _session_reads(_tables_read(client)) == 1
    assert _session_reads(_tables_read(client)) == 0


def test_sessions_work_while_redis_is_down(staff_operator, redis_server):
    """Issue #12 (a Redis outage must not log anyone out or fail requests): login, requests and logout
    go to the database while Redis is unreachable."""
    if getattr(redis_server, "external", False):
        pytest.skip("needs the Redis these tests started (it is stopped and started again)")
    before = _logged_in(staff_operator)
    redis_server.stop()
    try:
        assert _session_reads(_tables_read(before)) == 1
        during = _logged_in(staff_operator)
        _tables_read(during)
        cookie = during.cookies[settings.SESSION_COOKIE_NAME].value
        assert during.post("/admin/logout/").status_code == 200
        during.cookies[settings.SESSION_COOKIE_NAME] = cookie
        _tables_read(during, status=401)
    finally:
        redis_server.restart()
    _tables_read(before)
