"""The workload watcher's cache of this manager's Jobs and Pods (an informer, as controllers keep one).

Filled by a list, then kept current by watch events (jobs/k8s_watch.py); no I/O here. Each change
says which Jobs it affects (a pod affects the Job it belongs to), and the Observation of a Job
(`k8s_reconcile.observe_job`, the same mapping the reconcile pass uses) is computed once per change,
not once per pass. `CachedObserver` answers `observe_many` from the cache, so the scheduler's own
reconcile code applies what it sees.
"""
from __future__ import annotations

import contextlib
import logging

from jobs import k8s_reconcile
from jobs.launchers.base import Observation, Phase

logger = logging.getLogger(__name__)

JOBS, PODS = "jobs", "pods"


class Informer:
    """Jobs and pods by name, pods by Job name, and each Job's Observation while nothing changed."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self._pods_by_job: dict[str, set[str]] = {}
        self._observed: dict[str, Observation] = {}
        self.synced: set[str] = set()  # the kinds listed at least once: only then is "missing" true
        self.versions: dict[str, str] = {}  # kind -> the resourceVersion the cache is at

    @property
    def ready(self) -> bool:
        return self.synced == {JOBS, PODS}

    # ------------------------------------------------------------------ changes

    def replace(self, kind: str, items: list[dict], version: str) -> set[str]:
        """A (re)list: the cache of `kind` becomes `items`; returns the Jobs whose view changed."""
        current = self.jobs if kind == JOBS else self.pods
        fresh = {item["metadata"]["name"]: item for item in items}
        affected = set()
        for name in current.keys() - fresh.keys():
            affected |= self._remove(kind, name)
        for name, obj in fresh.items():
            old = current.get(name)
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                affected |= self._store(kind, obj)
        self.synced.add(kind)
        self.versions[kind] = version
        return affected

    def apply(self, kind: str, event: dict) -> set[str]:
        """One watch event (ADDED, MODIFIED, DELETED); returns the Jobs it affects."""
        obj = event["object"]
        self.versions[kind] = obj["metadata"]["resourceVersion"]
        if event["type"] == "DELETED":
            return self._remove(kind, obj["metadata"]["name"])
        return self._store(kind, obj)

    def _store(self, kind: str, obj: dict) -> set[str]:
        name = obj["metadata"]["name"]
        if kind == JOBS:
            self.jobs[name] = obj
            affected = {name}
        else:
            self.pods[name] = obj
            affected = {k8s_reconcile.pod_job_name(obj)}
            self._pods_by_job.setdefault(next(iter(affected)), set()).add(name)
        self._forget(affected)
        return affected

    def _remove(self, kind: str, name: str) -> set[str]:
        if kind == JOBS:
            self.jobs.pop(name, None)
            affected = {name}
        else:
            pod = self.pods.pop(name, None)
            if pod is None:
                return set()
            job = k8s_reconcile.pod_job_name(pod)
            names = self._pods_by_job.get(job, set())
            names.discard(name)
            if not names:
                self._pods_by_job.pop(job, None)
            affected = {job}
        self._forget(affected)
        return affected

    def _forget(self, job_names) -> None:
        for name in job_names:
            self._observed.pop(name, None)

    # ------------------------------------------------------------------ reads

    def observation(self, job_name: str) -> Observation:
        observed = self._observed.get(job_name)
        if observed is None:
            pods = [self.pods[name] for name in self._pods_by_job.get(job_name, ())]
            observed = self._observed[job_name] = k8s_reconcile.observe_job(self.jobs.get(job_name), pods)
        return observed


class CachedObserver:
    """`observe_many` from the cache, for the scheduler's reconcile code (`scheduler._reconcile_steps`).

    A Job the cache does not hold is read from the API before it counts as missing: a step launched a
    moment ago may be in the database before its Job's ADDED event reached the cache, and "missing"
    ends a step as lost. Orphans and leftovers are handled from the cache's Jobs when asked
    (`handle_orphans`), as the launcher's `observe_many` does from its lists."""

    def __init__(self, informer: Informer, launcher, *, handle_orphans: bool, lock=None):
        self.informer, self.launcher, self.handle_orphans = informer, launcher, handle_orphans
        self.lock = lock or contextlib.nullcontext()  # held while reading the cache, never during API calls
        self.live_reads = 0  # Jobs read from the API because the cache did not have them

    def observe_many(self, steps) -> dict[int, Observation]:
        with self.lock:
            observations = {step.pk: self.informer.observation(step.job_name) for step in steps}
            jobs = dict(self.informer.jobs) if self.handle_orphans else {}
        for step in steps:
            if observations[step.pk].phase == Phase.MISSING:
                self.live_reads += 1
                observations[step.pk] = self.launcher.status(step)
        if self.handle_orphans:
            rest = k8s_reconcile.Snapshot(jobs=jobs).without(step.job_name for step in steps)
            try:
                k8s_reconcile.handle_orphans(self.launcher, rest)
                k8s_reconcile.delete_leftovers(self.launcher, rest)
            except Exception:  # the next sweep tries again; observing must not stop for it
                logger.exception("could not handle orphan or leftover Jobs this sweep")
        return observations
