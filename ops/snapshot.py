"""A value computed at most once per interval per process: what `/metrics` and `/health/ready` serve.

Both answer anonymous requests and cost database aggregates or dependency checks; without this a
flood of scrapes or probes would run those per request. One caller computes while concurrent
callers wait for its result (no stampede when the interval ends). Errors are not cached.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

# Monotonic, so a wall-clock jump neither freezes nor floods the cache; tests replace it.
_clock: Callable[[], float] = time.monotonic


def cache_seconds() -> float:
    from django.conf import settings

    return float(getattr(settings, "OPS_CACHE_SECONDS", 5.0))


class Snapshot(Generic[T]):
    def __init__(self, compute: Callable[[], T], seconds: Callable[[], float] = cache_seconds) -> None:
        self._compute = compute
        self._seconds = seconds
        self._lock = threading.Lock()
        self._value: T | None = None
        self._expires_at: float | None = None

    def get(self) -> T:
        seconds = self._seconds()
        if seconds <= 0:
            return self._compute()
        with self._lock:
            if self._expires_at is not None and _clock() < self._expires_at:
                return self._value  # type: ignore[return-value]
            value = self._compute()
            # The interval starts when the value is known, so a slow computation is not re-run at once.
            self._value, self._expires_at = value, _clock() + seconds
            return value

    def clear(self) -> None:
        with self._lock:
            self._value, self._expires_at = None, None
