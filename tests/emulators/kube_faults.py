"""Seeded random API faults for the Kubernetes emulator in its own process (the chaos suite's R6).

``POST /_emulator/faults`` ``{"seed", "rate", "kinds", "slow_seconds", "refuse_seconds", "path"}`` turns
them on: each API request whose path matches ``path`` (default: the API, never the control surface)
draws, with probability ``rate``, one of ``kinds``:

- ``"500"``, ``"503"``: that status with a Kubernetes Status body, nothing done;
- ``"429"``: Too Many Requests with ``Retry-After: 1``, nothing done;
- ``"409"``: on a create, the object IS created and the answer is ``409 AlreadyExists`` — what a client
  sees when its first attempt went through but the answer was lost and its retry met the result;
  other methods get a 409 Conflict with nothing done;
- ``"slow"``: the request is done after ``slow_seconds`` (past the client's timeout: it gave up while
  the server acted, as on a real overloaded API server);
- ``"refuse"``: no answer, the connection is closed and the listener stops for ``refuse_seconds``
  (new connections are refused), then listens again on the same port with its data.

``GET /_emulator/faults`` answers what was injected per kind; ``DELETE`` turns them off (and answers
the same). Everything else stays as strict as the emulator is without faults.
"""
from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter

KINDS = ("500", "503", "429", "409", "slow", "refuse")


class RandomFaults:
    def __init__(self):
        self.lock = threading.Lock()
        self.rng = random.Random(0)
        self.rate, self.kinds, self.path = 0.0, (), re.compile(r"^/apis?/")
        self.slow_seconds, self.refuse_seconds = 35.0, 3.0
        self.injected: Counter = Counter()

    def configure(self, body: dict) -> dict:
        kinds = tuple(str(k) for k in body.get("kinds", KINDS))
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {KINDS}")
        rate = float(body.get("rate", 0.1))
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within [0, 1]")
        with self.lock:
            self.rng = random.Random(int(body.get("seed", 0)))
            self.rate, self.kinds = rate, kinds
            self.path = re.compile(body.get("path", r"^/apis?/"))
            self.slow_seconds = float(body.get("slow_seconds", self.slow_seconds))
            self.refuse_seconds = float(body.get("refuse_seconds", self.refuse_seconds))
            self.injected.clear()
        return self.report()

    def clear(self) -> dict:
        with self.lock:
            self.rate, self.kinds = 0.0, ()
        return self.report()

    def report(self) -> dict:
        with self.lock:
            return {"rate": self.rate, "kinds": list(self.kinds), "injected": dict(self.injected)}

    def draw(self, path: str) -> str | None:
        with self.lock:
            if not self.kinds or not self.path.search(path) or self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(self.kinds)
            self.injected[kind] += 1
            return kind


def faulty_handler(base, faults: RandomFaults, refuse, status_body, reasons, already_exists):
    """A subclass of the emulator's request handler that injects ``faults``; ``refuse(seconds)`` stops
    the listener for a while (the server loop owns it); ``already_exists(path, obj)`` is the (code, Status)
    the emulator answers to a create of an existing object."""

    class FaultyHandler(base):
        _conflict_on_success = False

        def _dispatch(self):
            self._conflict_on_success = False
            path = self.path.split("?", 1)[0]
            kind = faults.draw(path)
            if kind is None:
                return super()._dispatch()
            if kind == "slow":
                time.sleep(faults.slow_seconds)
                return super()._dispatch()
            if kind == "409" and self.command == "POST":
                self._conflict_on_success = True
                return super()._dispatch()
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the connection stays usable
            if kind == "refuse":
                self.close_connection = True
                refuse(faults.refuse_seconds)
                return None
            code = int(kind)
            body = status_body(code, reasons.get(code, "Unknown"), f"injected failure ({code})")
            return self._send(code, body, {"Retry-After": "1"} if code in (429, 503) else None)

        def _send(self, code, body, headers=None):
            if self._conflict_on_success and 200 <= code < 300 and isinstance(body, dict):
                code, body = already_exists(self.path.split("?", 1)[0], body)
            return super()._send(code, body, headers)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    return FaultyHandler
