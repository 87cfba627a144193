"""The workload watcher (`manage.py watch_workloads`): reconcile by watching the cluster, not relisting it.

What Kubernetes controllers do: list this manager's Jobs and Pods once, then watch each from the
list's resourceVersion, keeping an in-memory cache (jobs/k8s_informer.py). One thread per watch
reads its stream and hands the events to the main thread, which applies them to the cache and
reconciles only the steps whose Job (or one of its pods) changed — through the scheduler's own
reconcile code (`scheduler.reconcile_workloads`), so there is one logic for a pass and a watch.

No change is lost:
- a watch that ends (timeoutSeconds) or breaks (a dropped connection, an API restart) starts again
  from the last resourceVersion it delivered; the server sends every change after it;
- a watch silent for K8S_WATCH_IDLE_SECONDS (no event, no bookmark: a quiet cluster, or a half-open
  connection that will never deliver again) is ended and watched again from there; the watcher does
  not count as healthy until the new watch is answered, so one that gets no answer stops the heartbeat;
- a watch told its version is too old (410 Expired: an ERROR event or the HTTP status) lists again,
  and the new list replaces the cache (what changed meanwhile is reconciled);
- every K8S_RELIST_SECONDS it lists again anyway (the controllers' resync, a safety net);
- every RECONCILE_INTERVAL_SECONDS a sweep applies the cache to every launched step (what depends on
  time: a stop's grace period, a launch in flight, leftovers and orphans) — without API calls.

While synced and current it writes a heartbeat (jobs/k8s_heartbeat.py); the beat's reconcile pass then
leaves the cluster to it. Without a healthy watcher the beat lists the cluster as before.
"""
from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connections
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import ReadTimeoutError

from jobs import k8s_heartbeat, scheduler
from jobs.signals import workload_watch_counted
from jobs.k8s_informer import JOBS, PODS, CachedObserver, Informer
from jobs.launchers import get_launcher
from jobs.manifests import manager_selector

logger = logging.getLogger(__name__)

_BATCH = 500  # events applied before the changed steps are reconciled (a burst still reconciles often)


class _Relist(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class WorkloadWatcher:
    def __init__(self, launcher=None, *, background_sweep: bool = True):
        self.launcher = launcher or get_launcher("kubernetes")
        self.informer = Informer()
        # The sweep reads every launched step (~1 s at 10,000): on a thread of its own it does not hold
        # up the changes arriving meanwhile. The lock keeps the cache whole while either reads it.
        self.background_sweep, self._sweeper, self.lock = background_sweep, None, threading.Lock()
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.down: dict[str, float | None] = {JOBS: 0.0, PODS: 0.0}  # kind -> since when its watch is not open
        self.stats = {"events": 0, "lists": 0, "watches": 0, "expired": 0, "broken": 0, "silent": 0, "reconciled": 0}
        self._threads: list[threading.Thread] = []
        self._last_beat = self._next_sweep = 0.0

    # ------------------------------------------------------------------ the watch threads

    def _watch(self, kind: str) -> None:
        version, relist_at, failures = None, 0.0, 0
        while not self.stopping.is_set():
            try:
                if version is None or time.monotonic() >= relist_at:
                    items, version = self.launcher.list_labelled_versioned(kind)
                    self._count(kind, "list")
                    self.events.put(("list", kind, items, version))
                    relist_at = time.monotonic() + settings.K8S_RELIST_SECONDS
                version = self._stream(kind, version, max(1, min(settings.K8S_WATCH_TIMEOUT_SECONDS,
                                                                 int(relist_at - time.monotonic()) + 1)))
                failures = 0
            except _Relist:
                self._count(kind, "expired")
                logger.info("watch resourceVersion expired, listing again", extra={"kind": kind})
                version = None
            except Exception as exc:  # a broken stream or an unreachable API: watch again from `version`
                self._count(kind, "broken")
                self.down[kind] = self.down[kind] or time.monotonic()
                failures += 1
                delay = min(settings.LAUNCH_RETRY_BACKOFF_SECONDS * 2 ** min(failures - 1, 5), 30.0)
                logger.warning("watch of %s broke (%s); again from %s in %.1fs", kind, exc, version, delay)
                self.stopping.wait(delay)

    def _stream(self, kind: str, version: str, timeout: int) -> str:
        """One watch request, read to its end; returns the last resourceVersion it delivered.

        The read timeout is K8S_WATCH_IDLE_SECONDS, per read: a half-open connection (no RST, no bytes)
        would otherwise hold the stream, and the heartbeat, until timeoutSeconds + a margin. Bookmarks
        cannot keep a quiet stream alive (the API promises none at any interval), so a quiet stream
        ends too and is watched again: one request per idle period, no list."""
        fn = self.launcher.batch.list_namespaced_job if kind == JOBS else self.launcher.core.list_namespaced_pod
        try:
            resp = fn(self.launcher.namespace, label_selector=manager_selector(), watch=True,
                      resource_version=version, timeout_seconds=timeout, allow_watch_bookmarks=True,
                      _preload_content=False, _request_timeout=(5.0, settings.K8S_WATCH_IDLE_SECONDS))
        except ApiException as exc:
            if exc.status == 410:
                raise _Relist() from exc
            raise
        self.stats["watches"] += 1
        self.down[kind] = None
        ended = False
        try:
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise _Relist()
                    raise RuntimeError(f"watch error {status.get('code')}: {status.get('message')}")
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self.events.put(("event", kind, event))
                if self.stopping.is_set():
                    return version
            ended = True
            return version  # ended at timeoutSeconds: watched again from here at once
        except ReadTimeoutError:
            # Silent too long: quiet, or half-open. Not healthy until the next watch is answered.
            self._count(kind, "silent")
            self.down[kind] = self.down[kind] or time.monotonic()
            logger.info("watch of %s silent for %ss; watching again from %s", kind,
                        settings.K8S_WATCH_IDLE_SECONDS, version)
            return version
        finally:
            if not ended:  # mid-stream (or half-open): the connection must not go back to the pool
                resp.close()
            resp.release_conn()

    def _count(self, kind: str, outcome: str) -> None:
        self.stats[{"event": "events", "list": "lists"}.get(outcome, outcome)] += 1
        workload_watch_counted.send(sender=WorkloadWatcher, kind=kind, outcome=outcome, count=1)

    # ------------------------------------------------------------------ the main thread

    def start(self) -> None:
        for kind in (JOBS, PODS):
            thread = threading.Thread(target=self._watch, args=(kind,), daemon=True, name=f"watch-{kind}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, until=None, install_signals: bool = False) -> None:
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        self.start()
        try:
            while not self.stopping.is_set() and not (until and until()):
                close_old_connections()  # a connection the database dropped is replaced, as per request
                self.step()
        finally:
            self.stopping.set()
            k8s_heartbeat.clear()

    def step(self) -> None:
        """One round of the main thread: apply what arrived, reconcile what it changed, sweep when due."""
        dirty = self._take_events()
        if not self.informer.ready:
            return  # before both lists nothing may count as missing
        try:
            if dirty:
                self._reconcile(dirty)
            if time.monotonic() >= self._next_sweep and not (self._sweeper and self._sweeper.is_alive()):
                self._next_sweep = time.monotonic() + settings.RECONCILE_INTERVAL_SECONDS
                if self.background_sweep:
                    self._sweeper = threading.Thread(target=self._sweep, daemon=True, name="watch-sweep")
                    self._sweeper.start()
                else:
                    self._reconcile(None)
        except Exception:  # the database away: the events are in the cache, the sweep catches up
            logger.exception("workload watcher could not reconcile; the next sweep retries")
            self._next_sweep = 0.0
            return
        self._heartbeat()

    def _sweep(self) -> None:
        try:
            close_old_connections()
            self._reconcile(None)
        except Exception:
            logger.exception("workload watcher sweep failed; the next one retries")
        finally:
            connections.close_all()  # this thread's own connection

    def _take_events(self) -> set[str]:
        """Apply what arrived (at most _BATCH items, in order; the rest stays queued for the next round)."""
        dirty: set[str] = set()
        try:
            items = [self.events.get(timeout=0.2)]
        except queue.Empty:
            return dirty
        while len(items) < _BATCH:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        with self.lock:
            for item in items:
                if item[0] == "list":
                    _, kind, objects, version = item
                    dirty |= self.informer.replace(kind, objects, version)
                else:
                    self._count(item[1], "event")
                    dirty |= self.informer.apply(item[1], item[2])
        return dirty

    def _reconcile(self, job_names) -> dict:
        started = time.monotonic()
        observer = CachedObserver(self.informer, self.launcher, handle_orphans=job_names is None, lock=self.lock)
        summary = scheduler.reconcile_workloads(observer=observer, job_names=job_names)
        self.stats["reconciled"] += summary.get("observed", 0)
        if job_names is None:  # the sweep: what it costs and covers, in the heartbeat
            self.stats.update(sweep_s=round(time.monotonic() - started, 3), swept=summary.get("observed", 0),
                              sweeps=self.stats.get("sweeps", 0) + 1)
        return summary

    def healthy(self) -> bool:
        """Synced and swept once (what depends on time is covered), and both watches open (a broken one
        reopens within its backoff; one that stays broken — the API server unreachable — stops the
        heartbeat, and it expires). A watch that went silent counts as open again only once its next
        request is answered."""
        return self.informer.ready and self.stats.get("sweeps", 0) > 0 and all(
            self.down[kind] is None for kind in (JOBS, PODS))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < min(1.0, settings.K8S_WATCH_HEALTHY_SECONDS / 3) or not self.healthy():
            return
        try:
            k8s_heartbeat.beat(dict(self.informer.versions), dict(self.stats))
            self._last_beat = now
        except Exception:  # no heartbeat: the beat lists the cluster itself meanwhile
            logger.warning("could not write the workload watcher heartbeat", exc_info=True)
