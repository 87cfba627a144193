"""The workload watcher's heartbeat, in Redis: how the beat's reconcile pass knows a watcher is healthy.

The watcher (jobs/k8s_watch.py) writes it while its cache is synced and both watches are current,
with an expiry of K8S_WATCH_HEALTHY_SECONDS: a watcher that dies, hangs, or loses the API server
stops writing and the key expires; one that stops cleanly deletes it. Until the key is back the beat
lists the cluster itself (the pass as it was before the watcher), so nothing depends on the watcher
running. Redis trouble reads as "no healthy watcher" (the safe side).
"""
from __future__ import annotations

import json
import logging
import time

from django.conf import settings

from jobs.broker_redis import broker_redis as _redis

logger = logging.getLogger(__name__)



def key() -> str:
    # One watcher per manager and namespace (the deploy runs one replica).
    return f"streamforge:workload-watcher:{settings.K8S_MANAGER_ID}:{settings.K8S_NAMESPACE}"


def beat(versions: dict[str, str], stats: dict | None = None) -> None:
    """Say the watcher is healthy, at these resourceVersions (jobs, pods); `stats` for operators."""
    state = {"at": time.time(), "versions": versions, "stats": stats or {}}
    _redis().set(key(), json.dumps(state), px=int(settings.K8S_WATCH_HEALTHY_SECONDS * 1000))


def clear() -> None:
    try:
        _redis().delete(key())
    except Exception:  # it expires on its own
        logger.warning("could not clear the workload watcher heartbeat", exc_info=True)


def healthy_watcher() -> dict | None:
    """The heartbeat of a healthy watcher ({"at", "versions"}), or None: the pass lists the cluster."""
    try:
        raw = _redis().get(key())
    except Exception:
        logger.warning("workload watcher heartbeat unreadable; reconciling by listing", exc_info=True)
        return None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
