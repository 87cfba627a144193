"""Health probes for Kubernetes (and anyone else): live, ready, startup.

- `/health/live`: the process answers. Touches no dependency, so a database outage never makes
  Kubernetes restart healthy pods.
- `/health/ready`: the database, the Celery broker and every *enabled* integration (Kafka when
  KAFKA_BOOTSTRAP_SERVERS is set, the Kubernetes API when JOB_LAUNCHER=kubernetes, ArangoDB when
  ARANGO_URL is set) answer within short timeouts. Checks run concurrently under one deadline.
- `/health/startup`: every migration is applied.

No authentication (keep them internal: see the README's network policy), and nothing secret in the
answers: errors are short, redacted messages. The ready answer is cached for OPS_CACHE_SECONDS, so a
flood of probes runs the checks once per interval.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from ops.logging import redact
from ops.snapshot import Snapshot

CHECK_TIMEOUT_SECONDS = 2.0
READY_DEADLINE_SECONDS = 3.0


# ------------------------------------------------------------------ the checks


def check_database() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # Runs in a pool thread: its connection would otherwise linger until the thread dies.
        connection.close()


def check_broker() -> None:
    import redis

    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    finally:
        client.close()


def kafka_client_config() -> dict:
    # The same connection settings as the consumers (SASL_SSL/SCRAM when KAFKA_USER is set).
    from kafkabus.config import common_config

    config = common_config()
    config.update(
        {
            "socket.timeout.ms": int(CHECK_TIMEOUT_SECONDS * 1000),
            "socket.connection.setup.timeout.ms": int(CHECK_TIMEOUT_SECONDS * 1000),
            "log_level": 0,  # connection errors are reported in the answer, not as librdkafka log spam
        }
    )
    return config


def check_kafka() -> None:
    from confluent_kafka.admin import AdminClient

    AdminClient(kafka_client_config()).list_topics(timeout=CHECK_TIMEOUT_SECONDS)


def check_kubernetes() -> None:
    from kubernetes import client

    from jobs import k8s_client

    # The launcher's own client configuration (CA, token refresh), and an authenticated call its RBAC
    # allows (list jobs); limit=1 keeps it cheap.
    try:
        with k8s_client.api_client_from_settings() as api_client:
            client.BatchV1Api(api_client).list_namespaced_job(
                settings.K8S_NAMESPACE, limit=1, _request_timeout=CHECK_TIMEOUT_SECONDS
            )
    except Exception as exc:
        detail = k8s_client.tls_failure(exc)
        if detail:  # say "configuration", not a connection error someone waits out
            raise KubernetesTLSError(k8s_client.tls_message(detail)) from exc
        raise


class KubernetesTLSError(Exception):
    pass


def check_arango() -> None:
    # The mirror's own database, as its (least-privilege) user sees it; says when it may not create it.
    from mirror.arango import check_ready

    check_ready(timeout=CHECK_TIMEOUT_SECONDS)


def enabled_checks() -> dict[str, Callable[[], None]]:
    checks: dict[str, Callable[[], None]] = {"database": check_database, "broker": check_broker}
    if settings.KAFKA_ENABLED:
        checks["kafka"] = check_kafka
    if settings.JOB_LAUNCHER == "kubernetes":
        checks["kubernetes"] = check_kubernetes
    if settings.ARANGO_ENABLED:
        checks["arango"] = check_arango
    return checks


# ------------------------------------------------------------------ running them


def _short_error(exc: BaseException) -> str:
    # Class name plus the first line, redacted: enough to act on, no URLs with credentials.
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)[:200]


def _timed(check: Callable[[], None]) -> dict:
    started = time.monotonic()
    try:
        check()
        result: dict = {"ok": True}
    except Exception as exc:  # noqa: BLE001 — any failure makes the check fail, never the probe
        result = {"ok": False, "error": _short_error(exc)}
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


# Shared pool: a check stuck past the deadline keeps its thread, it does not pile up new ones per probe.
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")


def run_checks(checks: dict[str, Callable[[], None]], deadline: float = READY_DEADLINE_SECONDS) -> dict[str, dict]:
    started = time.monotonic()
    futures = {name: _pool.submit(_timed, check) for name, check in checks.items()}
    wait(futures.values(), timeout=deadline)
    results = {}
    for name, future in futures.items():
        if future.done():
            results[name] = future.result()
        else:
            future.cancel()
            results[name] = {"ok": False, "ms": round((time.monotonic() - started) * 1000, 1), "error": "timed out"}
    return results


# ------------------------------------------------------------------ views


@never_cache
def live(request) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readiness() -> tuple[dict, int]:
    """The readiness answer (body, HTTP status) after running every enabled check."""
    checks = run_checks(enabled_checks())
    ok = all(result["ok"] for result in checks.values())
    return {"status": "ok" if ok else "fail", "checks": checks}, 200 if ok else 503


# Probes are anonymous: the checks (database, broker, integrations) run at most once per
# OPS_CACHE_SECONDS per process, whatever the number of requests; a failure is cached the same way.
READY_SNAPSHOT = Snapshot(readiness)


@never_cache
def ready(request) -> JsonResponse:
    body, status = READY_SNAPSHOT.get()
    return JsonResponse(body, status=status)


def pending_migrations() -> list[str]:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


@never_cache
def startup(request) -> JsonResponse:
    try:
        pending = pending_migrations()
    except Exception as exc:  # noqa: BLE001
        return JsonResponse({"status": "fail", "error": _short_error(exc)}, status=503)
    if pending:
        return JsonResponse({"status": "fail", "pending_migrations": len(pending)}, status=503)
    return JsonResponse({"status": "ok"})
