"""Serving metrics: the web's `/metrics` view and a standalone exporter for non-web pods.

With PROMETHEUS_MULTIPROC_DIR set, samples come from every process writing into that directory
(gunicorn workers, Celery worker and beat, the consumers); otherwise from this process only.
"""
from __future__ import annotations

import os

import prometheus_client
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ops.metrics import STATE_REGISTRY
from ops.snapshot import Snapshot


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_registry() -> CollectorRegistry:
    """Counters/histograms/gauges of this process, or of all processes sharing the multiprocess dir."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return prometheus_client.REGISTRY


# The database-backed state (GROUP BY per table, mirror backlog) is read at most once per
# OPS_CACHE_SECONDS; counters and histograms are process memory or files, always served fresh.
STATE_SNAPSHOT = Snapshot(lambda: generate_latest(STATE_REGISTRY))


def metrics_view(request) -> HttpResponse:
    """`/metrics`: django-prometheus and domain metrics, plus state read from the database."""
    body = generate_latest(process_registry()) + STATE_SNAPSHOT.get()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def _on_worker_process_shutdown(pid=None, **_) -> None:
    # Live gauges (consumer lag) of a dead pool process must not be summed any more.
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def connect_celery_signals() -> None:
    from celery.signals import worker_process_shutdown

    worker_process_shutdown.connect(_on_worker_process_shutdown, dispatch_uid="ops.metrics.process_dead", weak=False)
