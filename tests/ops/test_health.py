"""Health probes: live without dependencies, ready with real dependency checks, startup on migrations."""
from __future__ import annotations

import json
import time

import pytest
from django.db.migrations.recorder import MigrationRecorder

from devtools.servers import free_port
from ops import health


def body(response) -> dict:
    return json.loads(response.content)


@pytest.mark.django_db
def test_it_answers_live_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/health/live")
    assert response.status_code == 200
    assert body(response) == {"status": "ok"}


def test_it_answers_live_for_any_host_and_without_ssl_redirect(client, settings):
    # Kubelet addresses the pod by IP, which ALLOWED_HOSTS does not list; HTTPS ends at the ingress.
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/health/live", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200


@pytest.mark.django_db
def test_it_is_ready_when_database_and_broker_answer(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    data = body(response)
    assert data["status"] == "ok"
    assert set(data["checks"]) == {"database", "broker"}
    assert all(check["ok"] and check["ms"] >= 0 for check in data["checks"].values())


@pytest.mark.django_db(transaction=True)
def test_it_turns_unready_while_redis_is_down_and_back_when_it_returns(client, redis_server):
    if getattr(redis_server, "external", False):
        pytest.skip("Redis is external: it cannot be stopped by tests")
    redis_server.stop()
    try:
        response = client.get("/health/ready")
        assert response.status_code == 503
        data = body(response)
        assert data["status"] == "fail"
        assert data["checks"]["broker"]["ok"] is False
        assert data["checks"]["broker"]["error"]
        assert data["checks"]["database"]["ok"] is True
    finally:
        redis_server.restart()
    response = client.get("/health/ready")
    assert response.status_code == 200, body(response)


@pytest.mark.django_db
def test_it_keeps_passwords_out_of_failed_checks(client, settings):
    settings.CELERY_BROKER_URL = f"redis://:hunter2-broker-pass@127.0.0.1:{free_port()}/0"
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert b"hunter2-broker-pass" not in response.content
    assert body(response)["checks"]["broker"]["ok"] is False


@pytest.mark.django_db
def test_it_is_unready_when_enabled_kafka_is_unreachable(client, settings):
    settings.KAFKA_ENABLED = True
    settings.KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    response = client.get("/health/ready")
    assert time.monotonic() - started < health.READY_DEADLINE_SECONDS + 1.5
    assert response.status_code == 503
    checks = body(response)["checks"]
    assert checks["kafka"]["ok"] is False and checks["kafka"]["error"]
    assert checks["database"]["ok"] and checks["broker"]["ok"]


@pytest.mark.django_db
def test_it_checks_a_reachable_kafka(client, settings, kafka_server):
    settings.KAFKA_ENABLED = True
    settings.KAFKA_BOOTSTRAP_SERVERS = kafka_server.bootstrap
    response = client.get("/health/ready")
    assert response.status_code == 200, body(response)
    assert body(response)["checks"]["kafka"]["ok"] is True


@pytest.mark.django_db
def test_it_checks_the_kubernetes_api_only_with_the_kubernetes_launcher(client, settings):
    from tests.emulators.kube import KubeCluster

    assert "kubernetes" not in body(client.get("/health/ready"))["checks"]
    with KubeCluster(token="probe-token") as cluster:
        settings.JOB_LAUNCHER = "kubernetes"
        settings.K8S_API_URL, settings.K8S_API_TOKEN, settings.K8S_NAMESPACE = cluster.url, "probe-token", "streamforge"
        ok = client.get("/health/ready")
        settings.K8S_API_TOKEN = "wrong-token"
        refused = client.get("/health/ready")
    assert ok.status_code == 200, body(ok)
    assert body(ok)["checks"]["kubernetes"]["ok"] is True
    assert refused.status_code == 503
    assert body(refused)["checks"]["kubernetes"]["ok"] is False
    assert b"wrong-token" not in refused.content


@pytest.mark.django_db
def test_it_checks_arangodb_when_the_mirror_is_enabled(client, settings):
    from tests.emulators.arango import ArangoEmulator

    with ArangoEmulator(username="root", password="arango-secret-pw") as arango:
        settings.ARANGO_ENABLED, settings.ARANGO_URL = True, arango.url
        settings.ARANGO_USER, settings.ARANGO_PASSWORD = "root", "arango-secret-pw"
        ok = client.get("/health/ready")
        arango.go_down()
        down = client.get("/health/ready")
    assert ok.status_code == 200, body(ok)
    assert body(ok)["checks"]["arango"]["ok"] is True
    assert down.status_code == 503
    assert body(down)["checks"]["arango"]["ok"] is False
    assert b"arango-secret-pw" not in down.content


def test_it_fails_a_check_that_misses_the_deadline():
    started = time.monotonic()
    results = health.run_checks({"slow": lambda: time.sleep(2), "fast": lambda: None}, deadline=0.3)
    assert time.monotonic() - started < 1.5
    assert results["slow"] == {"ok": False, "ms": pytest.approx(300, abs=200), "error": "timed out"}
    assert results["fast"]["ok"] is True


@pytest.mark.django_db
def test_it_reports_started_once_migrations_are_applied(client):
    response = client.get("/health/startup")
    assert response.status_code == 200
    assert body(response) == {"status": "ok"}


@pytest.mark.django_db
def test_it_reports_not_started_while_a_migration_is_pending(client):
    MigrationRecorder.Migration.objects.filter(app="queues").delete()
    response = client.get("/health/startup")
    assert response.status_code == 503
    assert body(response)["pending_migrations"] >= 1
