"""One small Redis client per process on the Celery broker's Redis, for the flags and heartbeats that
live beside the task queues (the mirror's drain flag, the workload watcher's heartbeat).

Short timeouts: every caller treats Redis trouble as "not known" and takes its safe side.
"""
from __future__ import annotations

from django.conf import settings

_client = None


def broker_redis():
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
    return _client
