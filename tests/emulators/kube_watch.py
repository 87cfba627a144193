"""Watch for the Kubernetes emulator: ``GET …/jobs?watch=true`` as the API server's watch cache serves it.

What a real server documents ("API concepts › Efficient detection of changes") and the emulator keeps:

- the response is ``200`` with ``Transfer-Encoding: chunked``, one JSON event per line:
  ``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": …}``;
- ``resourceVersion`` unset or ``"0"``: synthetic ``ADDED`` events for every object that matches now,
  then the changes after that; ``resourceVersion=N``: exactly the changes after N, in order;
- history is bounded (the watch cache's capacity, per resource): a watch from a version older than what
  is retained gets ``200`` and then one ``ERROR`` event whose object is a ``Status`` with code 410,
  reason ``Expired`` ("too old resource version: N (M)"), and the stream ends;
- with ``labelSelector``, an object whose labels stop matching arrives as ``DELETED`` and one that
  starts matching as ``ADDED``; a deletion's object carries the deletion's resourceVersion;
- ``allowWatchBookmarks=true`` may add ``BOOKMARK`` events (only ``kind``, ``apiVersion`` and
  ``metadata.resourceVersion``); a client may not rely on them (the server sends them about once a
  minute, ``bookmark_interval``);
- the stream closes at ``timeoutSeconds`` (default: the server's request timeout, 1800 s here);
- ``resourceVersionMatch`` is refused for a watch, ``sendInitialEvents`` is not emulated (400).

Test hooks for broken networks: ``drop_all`` cuts every stream (the peer sees the connection end);
``stall_all`` makes them half-open — the connection stays up, nothing more is written, no FIN, no RST,
as when a NAT or load balancer forgets a flow or the server's host vanishes — and with ``new=True``
watches asked for meanwhile get no answer at all (not even headers). ``unstall`` ends the stall; a
stalled stream is then cut (the flow it had is gone for good), a waiting request answered.

The history lives in the store's ``ObjectIndex`` (``WatchLog``), written under the store's lock by every
write and removal, so a watch sees each change once and in revision order.
"""
from __future__ import annotations

import collections
import json
import threading
import time

DEFAULT_CAPACITY = 1000  # events kept per resource: older versions are "too old" (410 Expired)
DEFAULT_TIMEOUT = 1800
_WAIT_STEP = 0.2  # how often a quiet stream checks for the server closing or a dropped connection


# Go's strconv.ParseBool, which the API server uses for watch=…: the Python client sends "True".
TRUE = ("1", "t", "T", "true", "TRUE", "True")


class Expired(Exception):
    def __init__(self, requested: int, oldest: int):
        super().__init__(f"too old resource version: {requested} ({oldest})")


class WatchLog:
    """Per resource, the last ``capacity`` events: (revision, type, namespace, labels before, labels
    after, encoded object). ``horizon[plural]``: the oldest version a watch can start from."""

    def __init__(self, revision: int, capacity: int = DEFAULT_CAPACITY):
        self.cond = threading.Condition()
        self.capacity = capacity
        self._events: dict[str, collections.deque] = {}
        self._horizon: dict[str, int] = {}
        self._start = revision
        self.drops = 0  # bumped by drop_all(): streams then cut their connection without a final chunk
        self.stalls = 0  # bumped by stall_all(): the streams open then write nothing more (half-open) ...
        self.stalled = False  # ... while this holds (unstall() clears it)
        self.stall_new = False  # ... and new watch requests get no answer either

    def record(self, plural, type_, namespace, revision, before, after, encoded: bytes):
        with self.cond:
            events = self._events.setdefault(plural, collections.deque())
            events.append((revision, type_, namespace, before, after, encoded))
            while len(events) > self.capacity:
                self._horizon[plural] = events.popleft()[0]
            self.cond.notify_all()

    def compact(self, revision: int):
        """Forget every event up to ``revision`` (etcd compaction): older watches get 410 Expired."""
        with self.cond:
            self._start = max(self._start, revision)
            for plural in list(self._events):
                events = self._events[plural]
                while events and events[0][0] <= revision:
                    events.popleft()
                self._horizon[plural] = max(self._horizon.get(plural, 0), revision)

    def drop_all(self):
        with self.cond:
            self.drops += 1
            self.cond.notify_all()

    def stall_all(self, *, new: bool = False):
        with self.cond:
            self.stalls += 1
            self.stalled, self.stall_new = True, new
            self.cond.notify_all()

    def unstall(self):
        with self.cond:
            self.stalled = self.stall_new = False
            self.cond.notify_all()

    def wait_stalled(self, closed) -> None:
        """Hold the calling stream while the stall lasts (or until the server closes)."""
        with self.cond:
            while self.stalled and not closed():
                self.cond.wait(_WAIT_STEP)

    def after(self, plural, revision):
        """Events of ``plural`` past ``revision`` (raises Expired when some were already forgotten)."""
        oldest = max(self._horizon.get(plural, 0), self._start)
        if revision < oldest:
            raise Expired(revision, oldest)
        events = self._events.get(plural, ())
        if not events or events[-1][0] <= revision:
            return []
        return [event for event in events if event[0] > revision]


def _encode_deleted(obj: dict, revision: int) -> bytes:
    meta = {**obj["metadata"], "resourceVersion": str(revision)}
    return json.dumps({**obj, "metadata": meta}).encode()


def record_write(log: WatchLog, key, before: dict | None, obj: dict, encoded: bytes):
    """ObjectIndex's hook: an object stored (ADDED when new, else MODIFIED)."""
    old_labels = None if before is None else (before["metadata"].get("labels") or {})
    log.record(key[0], "ADDED" if before is None else "MODIFIED", key[1], int(obj["metadata"]["resourceVersion"]),
               old_labels, obj["metadata"].get("labels") or {}, encoded)


def record_removal(log: WatchLog, key, obj: dict, revision: int):
    labels = obj["metadata"].get("labels") or {}
    log.record(key[0], "DELETED", key[1], revision, labels, None, _encode_deleted(obj, revision))


class WatchStream:
    """One watch request, answered by ``serve(handler)`` on the handler's thread."""

    def __init__(self, store, plural, namespace, labels_ok, query, kind, api_version, bookmark_interval):
        from .kube import ApiError

        if query.get("resourceVersionMatch"):
            raise ApiError(400, "resourceVersionMatch is forbidden for watch")
        if query.get("sendInitialEvents"):
            raise ApiError(400, "sendInitialEvents is not emulated")
        rv = query.get("resourceVersion") or ""
        try:
            self.since = None if rv in ("", "0") else int(rv)
            self.timeout = int(query.get("timeoutSeconds") or DEFAULT_TIMEOUT)
        except ValueError as exc:
            raise ApiError(400, f"invalid watch parameter: {exc}") from exc
        if self.since is not None and self.since < 0:
            raise ApiError(400, f"invalid resource version: {rv}")
        self.store, self.plural, self.namespace, self.labels_ok = store, plural, namespace, labels_ok
        self.kind, self.api_version = kind, api_version
        self.bookmarks = query.get("allowWatchBookmarks") in TRUE
        self.bookmark_interval = bookmark_interval

    # ------------------------------------------------------------------ events

    def _initial(self):
        """(synthetic ADDED events of what matches now, the revision they are at): one consistent read."""
        with self.store.lock:
            items, _ = self.store.objects.page(self.plural, self.namespace, self.labels_ok)
            return [b'{"type": "ADDED", "object": ' + item + b"}\n" for item in items], \
                self.store.objects.revision

    def _lines(self, events):
        lines = []
        for _, type_, namespace, before, after, encoded in events:
            if self.namespace is not None and namespace != self.namespace:
                continue
            was = before is not None and self.labels_ok(before)
            now = after is not None and self.labels_ok(after)
            if type_ == "DELETED":
                now = False
            if was and now:
                type_ = "MODIFIED"
            elif now:
                type_ = "ADDED"
            elif was:
                type_ = "DELETED"
            else:
                continue
            lines.append(b'{"type": "' + type_.encode() + b'", "object": ' + encoded + b"}\n")
        return lines

    def _bookmark(self, revision):
        return json.dumps({"type": "BOOKMARK", "object": {"kind": self.kind, "apiVersion": self.api_version,
                                                          "metadata": {"resourceVersion": str(revision)}}}).encode() + b"\n"

    # ------------------------------------------------------------------ the response

    def serve(self, handler):
        log = self.store.objects.watch_log
        if log.stall_new and log.stalled:  # the request went into the void: never answered
            log.wait_stalled(lambda: self.store.closed)
            handler.close_connection = True
            try:
                handler.connection.shutdown(2)
            except OSError:
                pass  # the client gave up first
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        deadline = time.monotonic() + self.timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        with log.cond:
            drops, stalls = log.drops, log.stalls
        try:
            if self.since is None:
                lines, at = self._initial()
                self._write(handler, lines)
            else:
                at = self.since
            while True:
                with log.cond:
                    try:
                        events = log.after(self.plural, at)
                    except Expired as exc:
                        events = None
                        error = exc
                    if events == [] and log.drops == drops and not self.store.closed:
                        log.cond.wait(min(_WAIT_STEP, max(0.0, deadline - time.monotonic())))
                        events = log.after(self.plural, at) if log.drops == drops else []
                    dropped = log.drops != drops or self.store.closed
                    stalled = log.stalled and log.stalls != stalls  # a stall begun after this stream opened
                if stalled:  # half-open: write nothing more; the flow never comes back
                    log.wait_stalled(lambda: self.store.closed or log.drops != drops)
                    dropped = True
                if dropped:  # the connection breaks: no final chunk, as when a proxy or the server dies
                    handler.close_connection = True
                    handler.connection.shutdown(2)
                    return
                if events is None:
                    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": str(error), "reason": "Expired", "code": 410}
                    self._write(handler, [json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"])
                    break
                if events:
                    at = events[-1][0]
                    self._write(handler, self._lines(events))
                now = time.monotonic()
                if self.bookmarks and now >= next_bookmark:
                    self._write(handler, [self._bookmark(at)])
                    next_bookmark = now + self.bookmark_interval
                if now >= deadline:
                    break
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True  # the client went away

    @staticmethod
    def _write(handler, lines):
        if not lines:
            return
        data = b"".join(lines)
        handler.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        handler.wfile.flush()
