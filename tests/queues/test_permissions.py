"""Who may do what: anonymous users get 401/403 and no data; viewers read; operators start and stop."""
from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from queues.models import Queue, QueueStatus
from tests.queues.factories import UserFactory, make_queue, payload

pytestmark = pytest.mark.django_db

READS = ["/api/queues/", "/api/queues/perm-q/", "/api/queues/perm-q/steps/", "/api/catalogue/", "/api/templates/",
         "/api/templates/historical-pipeline/", "/queues/list", "/api/schema/"]  # fmt: skip


@pytest.fixture
def queue():
    return make_queue(queue_id="perm-q")


def _client(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.mark.parametrize("url", READS)
def test_it_gives_anonymous_users_no_data(queue, url):
    response = APIClient().get(url)
    assert response.status_code in (401, 403)
    assert b"perm-q" not in response.content and b"BTCUSDT" not in response.content


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("post", "/api/queues/", payload()),
        ("post", "/api/queues/perm-q/stop/", None),
        ("post", "/queues/start-pipeline", payload()),
        ("post", "/queues/stop", {"queue_id": "perm-q"}),
    ],
)
def test_it_lets_anonymous_users_change_nothing(queue, method, url, body):
    response = getattr(APIClient(), method)(url, body, format="json")
    assert response.status_code in (401, 403)
    assert Queue.objects.count() == 1
    queue.refresh_from_db()
    assert queue.status == QueueStatus.PENDING and queue.stop_requested_at is None


@pytest.mark.parametrize("url", READS)
def test_it_lets_a_viewer_read(queue, viewer, url):
    assert _client(viewer).get(url).status_code == 200


def test_it_refuses_reads_to_a_user_without_view_permission(queue):
    nobody = UserFactory(username="nobody")
    response = _client(nobody).get("/api/queues/")
    assert response.status_code == 403
    assert "queues.view_queue" in response.json()["detail"]
    assert b"perm-q" not in response.content


def test_it_refuses_start_and_stop_to_a_viewer(queue, viewer):
    client = _client(viewer)
    created = client.post("/api/queues/", payload(), format="json")
    assert created.status_code == 403 and "queues.start_queue" in created.json()["detail"]
    stopped = client.post("/api/queues/perm-q/stop/")
    assert stopped.status_code == 403 and "queues.stop_queue" in stopped.json()["detail"]
    assert client.post("/queues/start-pipeline", payload(), format="json").status_code == 403
    assert client.post("/queues/stop", {"queue_id": "perm-q"}, format="json").status_code == 403
    assert Queue.objects.count() == 1
    queue.refresh_from_db()
    assert queue.stop_requested_at is None


def test_it_separates_start_from_stop():
    starter = UserFactory(username="starter", perms=["view_queue", "start_queue"])
    client = _client(starter)
    created = client.post("/api/queues/", payload(queue_id="mine"), format="json")
    assert created.status_code == 201
    assert client.post("/api/queues/mine/stop/").status_code == 403


def test_it_lets_an_operator_start_and_stop(operator):
    client = _client(operator)
    assert client.post("/api/queues/", payload(queue_id="op-q"), format="json").status_code == 201
    assert client.post("/api/queues/op-q/stop/").status_code == 202


def test_it_authenticates_with_a_token(queue, operator):
    token = Token.objects.create(user=operator)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/queues/perm-q/").status_code == 200
    assert client.post("/api/queues/", payload(queue_id="by-token"), format="json").status_code == 201
    assert Queue.objects.get(queue_id="by-token").submitted_by == operator


def test_it_rejects_a_wrong_token(queue):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get("/api/queues/")
    # 403, not 401: DRF answers with the first authenticator's scheme, and Session has none.
    assert response.status_code in (401, 403)
    assert response.json()["detail"] == "Invalid token."
    assert b"perm-q" not in response.content


def test_it_authenticates_with_a_session_and_requires_csrf(queue, operator):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.get("/api/queues/").status_code == 200
    response = client.post("/api/queues/", payload(), format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_it_redirects_anonymous_docs_visitors_to_the_login(client):
    for url in ("/api/docs/", "/api/redoc/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")
