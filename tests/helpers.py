"""Helpers shared by test packages."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02,
               message: str = "") -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    For effects a real server makes asynchronously (a garbage collector removing the pods of a deleted
    Job, a controller setting a condition). The timeout only bounds a failing test: a passing one
    returns as soon as the effect is seen, so nothing here asserts on time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {message or getattr(predicate, '__name__', predicate)}"
                                 f" (last value: {value!r})")
        time.sleep(interval)
