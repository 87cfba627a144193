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
    return make_queue(queue_id="perm-q", first_advance=False)


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


# --- Image override (issue #10 §5): a step's container receives the platform's credentials. ---


def _with_image(image: str, index: int = 2, **changes) -> dict:
    data = payload(**changes)
    data["requests"][index]["image"] = image
    return data


def test_it_refuses_an_image_from_another_registry_naming_the_field(operator):
    """Issue #10 §5 (image override): `start_queue` alone no longer lets a user run any image."""
    response = _client(operator).post("/api/queues/", _with_image("evil.example.com/miner:1"), format="json")
    assert response.status_code == 400, response.content
    (message,) = response.json()["requests[2].image"]
    assert "registry.local/streamforge" in message and "queues.override_image" in message
    assert Queue.objects.count() == 0


@pytest.mark.parametrize(
    "image",
    [
        "registry.local/streamforge-evil/loader-producer:1",  # a longer name is not the same registry path
        "registry.local/streamforge",  # the registry itself is no image under it
        "registry.local/streamforge/../../evil/x",  # not an image reference at all
        "loader-producer:latest",  # no registry named: the runtime's default registry
    ],
)
def test_it_refuses_lookalikes_of_the_allowed_registry(operator, image):
    """Issue #10 §5 (image override): only whole registry path components count as "from the registry"."""
    response = _client(operator).post("/api/queues/", _with_image(image), format="json")
    assert response.status_code == 400, response.content
    assert "requests[2].image" in response.json()


def test_it_accepts_an_image_from_the_catalogues_registry(operator):
    """Issue #10 §5 (image override): the default allowed registry is the catalogue's own."""
    image = "registry.local/streamforge/arango-connector:2.0@sha256:" + "a" * 64
    response = _client(operator).post("/api/queues/", _with_image(image), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["steps"][2]["image"] == image


def test_it_lets_a_user_with_override_image_use_any_registry():
    """Issue #10 §5 (image override): the separate permission `queues.override_image` lifts the limit."""
    user = UserFactory(username="imager", perms=["view_queue", "start_queue", "override_image"])
    response = _client(user).post("/api/queues/", _with_image("evil.example.com/miner:1"), format="json")
    assert response.status_code == 201, response.content


def test_it_reads_the_allowed_registries_from_settings(operator, settings):
    """Issue #10 §5 (image override): ALLOWED_IMAGE_REGISTRIES replaces the default list."""
    settings.ALLOWED_IMAGE_REGISTRIES = ["ghcr.io/acme", "Mirror.Internal:5000"]
    client = _client(operator)
    assert client.post("/api/queues/", _with_image("ghcr.io/acme/loader:1", queue_id="a1"), format="json").status_code == 201
    assert client.post("/api/queues/", _with_image("mirror.internal:5000/x/y", queue_id="a2"), format="json").status_code == 201
    refused = client.post("/api/queues/", _with_image("registry.local/streamforge/x:1", queue_id="a3"), format="json")
    assert refused.status_code == 400 and "requests[2].image" in refused.json()


def test_it_treats_a_start_without_a_user_as_without_the_permission(historical_payload):
    """Issue #10 §5 (image override): Kafka `start` commands have no user, so no override permission."""
    from queues.contract import PayloadError
    from jobs.submission import queue_create

    historical_payload["requests"][3]["image"] = "evil.example.com/miner:1"
    with pytest.raises(PayloadError) as raised:
        queue_create(payload=historical_payload, source="kafka")
    assert "requests[3].image" in raised.value.errors
    assert Queue.objects.count() == 0
