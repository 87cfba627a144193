"""Reading the cluster for reconcile: Jobs and Pods by label → Observations, and orphans.

Level-triggered: each pass lists everything this manager labelled (one list call for Jobs, one
for Pods, whatever the number of steps) and maps what it sees, so a restarted manager converges
to the cluster without having seen any event. The mapping functions take plain dicts (the API's
JSON) so they are the same for `status()` of one step and for a whole snapshot.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from jobs.launchers.base import Observation, Phase
from jobs.manifests import JOB_NAME_LABELS, LABEL_QUEUE, LABEL_STEP, label_value

logger = logging.getLogger(__name__)

# Container "waiting" reasons that mean trouble (ContainerCreating/PodInitializing are normal).
WAITING_PROBLEMS = {
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass
class Snapshot:
    """Every labelled Job and Pod in the namespace at one moment."""

    jobs: dict[str, dict] = field(default_factory=dict)  # by Job name
    pods: list[dict] = field(default_factory=list)
    _by_job: dict[str, list[dict]] | None = field(default=None, init=False, repr=False)

    def pods_of(self, job_name: str) -> list[dict]:
        # Indexed once per snapshot: scanning every pod for every Job made a pass quadratic.
        if self._by_job is None:
            self._by_job = {}
            for pod in self.pods:
                self._by_job.setdefault(pod_job_name(pod), []).append(pod)
        return list(self._by_job.get(job_name, ()))

    def without(self, job_names) -> Snapshot:
        """The Jobs not named in `job_names` (and no pods): what remains to check for orphans."""
        names = set(job_names)
        return Snapshot(jobs={name: job for name, job in self.jobs.items() if name not in names})


def pod_job_name(pod: dict) -> str:
    labels = pod.get("metadata", {}).get("labels") or {}
    return next((labels[key] for key in JOB_NAME_LABELS if labels.get(key)), "")


def _created(obj: dict) -> str:
    return obj.get("metadata", {}).get("creationTimestamp") or ""


def _age_key(pod: dict) -> tuple:
    # Timestamps have one-second resolution: among pods created in the same second, a finished pod
    # is the older attempt (the Job controller replaces failed pods, it never runs two at once).
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    return (_created(pod), 0 if finished else 1, pod["metadata"]["name"])


def newest_first(pods: list[dict]) -> list[dict]:
    return sorted(pods, key=_age_key, reverse=True)


def _condition(obj: dict, type_: str) -> dict | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def pod_problem(pod: dict) -> tuple[str, str, int | None]:
    """(reason, message, exit code) of what is wrong with a pod, ('', '', None) if nothing is."""
    status = pod.get("status") or {}
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return "Unschedulable", scheduled.get("message", ""), None
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in WAITING_PROBLEMS:
            # A crash loop is explained by how the container last died (often OOMKilled).
            last = (cs.get("lastState") or {}).get("terminated") or {}
            message = waiting.get("message", "")
            if last.get("reason"):
                message = f"last exit: {last['reason']} (code {last.get('exitCode')}); {message}".strip("; ")
            return waiting["reason"], message, last.get("exitCode")
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            reason = terminated.get("reason") or "Error"
            if status.get("reason"):  # pod-level (DeadlineExceeded, Evicted) explains more than "Error"
                return status["reason"], status.get("message", ""), terminated.get("exitCode")
            code = terminated.get("exitCode")
            return reason, terminated.get("message") or f"exited with code {code}", code
    if status.get("reason"):
        return status["reason"], status.get("message", ""), None
    return "", "", None


def _exit_code(pods: list[dict]) -> int | None:
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated and "exitCode" in terminated:
                return terminated["exitCode"]
    return None


def _reason(*parts: str) -> str:
    seen: list[str] = []
    for part in parts:
        if part and part not in seen:
            seen.append(part)
    return "; ".join(seen)


def observe_job(job: dict | None, pods: list[dict]) -> Observation:
    """Map a Job and its pods to an Observation (phase + the most telling reason)."""
    if job is None:
        return Observation(Phase.MISSING, reason="Job not found in the cluster")
    pods = newest_first(pods)
    problems = [(pod["metadata"]["name"], *pod_problem(pod)) for pod in pods]
    pod_reason, pod_message, pod_exit = next(((r, m, c) for _, r, m, c in problems if r), ("", "", None))
    details = {
        "job": job["metadata"]["name"],
        "uid": job["metadata"].get("uid", ""),
        "pods": [
            {"name": name, "phase": (pod.get("status") or {}).get("phase", ""), "reason": reason}
            for pod, (name, reason, _, _) in zip(pods, problems)
        ],
    }
    exit_code = pod_exit if pod_exit is not None else _exit_code(pods)

    done = _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")
    if done:
        return Observation(Phase.SUCCEEDED, exit_code=exit_code or 0, details=details)
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        job_reason = failed.get("reason", "Failed")
        details["message"] = _reason(pod_message, failed.get("message", ""))
        return Observation(Phase.FAILED, reason=_reason(pod_reason, job_reason), exit_code=exit_code, details=details)

    details["message"] = pod_message
    newest = pods[0] if pods else None
    newest_phase = (newest or {}).get("status", {}).get("phase", "")
    if newest_phase == "Running" or (not pods and (job.get("status") or {}).get("active")):
        return Observation(Phase.RUNNING, reason=pod_reason, exit_code=None, details=details)
    return Observation(Phase.PENDING, reason=pod_reason, exit_code=None, details=details)


# --------------------------------------------------------------------------- snapshot and orphans


def cluster_snapshot(launcher) -> Snapshot:
    """All Jobs and Pods carrying our managed-by label: one list call each (more only when paged)."""
    jobs = launcher.list_labelled("jobs")
    pods = launcher.list_labelled("pods")
    return Snapshot(jobs={job["metadata"]["name"]: job for job in jobs}, pods=pods)


def find_orphans(snapshot: Snapshot, known_job_names, known_steps=()) -> list[str]:
    """Labelled Jobs that no step in the database owns (e.g. the database was restored or reset).

    `known_steps` holds (queue-id label, step label) pairs: a Job of an earlier run of a retried
    step is not an orphan, it waits for its TTL like any finished Job.
    """
    known, steps = set(known_job_names), set(known_steps)
    return sorted(name for name, job in snapshot.jobs.items() if name not in known and _step_key(job) not in steps)


def _step_key(job: dict) -> tuple[str, str]:
    labels = job["metadata"].get("labels") or {}
    return labels.get(LABEL_QUEUE, ""), labels.get(LABEL_STEP, "")


def known_in_database(snapshot: Snapshot) -> tuple[set[str], set[tuple[str, str]]]:
    """(job names, (queue, step) label pairs) of the steps the database has for the snapshot's Jobs."""
    from queues.models import QueueRequest

    names = set(QueueRequest.objects.filter(job_name__in=list(snapshot.jobs)).values_list("job_name", flat=True))
    queue_labels = {_step_key(job)[0] for job in snapshot.jobs.values()}
    rows = QueueRequest.objects.filter(queue__queue_id__in=queue_labels).values_list("queue__queue_id", "name")
    return names, {(label_value(queue_id), label_value(name)) for queue_id, name in rows}


def delete_orphans(launcher, orphans: list[str]) -> list[str]:
    """Delete orphan Jobs with their pods; returns the names deleted."""
    deleted = []
    for name in orphans:
        launcher.delete_job(name)
        deleted.append(name)
    return deleted


def handle_orphans(launcher, snapshot: Snapshot) -> list[str]:
    """Report orphans as warnings and, with K8S_DELETE_ORPHANS, delete them. Returns the orphans."""
    orphans = find_orphans(snapshot, *known_in_database(snapshot))
    for name in orphans:
        logger.warning(
            "orphan Job: labelled by this manager but no step owns it",
            extra={"job_name": name, "delete": settings.K8S_DELETE_ORPHANS},
        )
    if orphans and settings.K8S_DELETE_ORPHANS:
        delete_orphans(launcher, orphans)
    return orphans


# --------------------------------------------------------------------------- leftovers of ended steps


def _still_running(job: dict) -> bool:
    # From 1.31 the controller sets SuccessCriteriaMet/FailureTarget first and Complete/Failed only
    # once the pods stopped: either one means the Job has ended.
    ended = any(_condition(job, kind) for kind in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"))
    return not ended and not job["metadata"].get("deletionTimestamp")


def find_leftovers(snapshot: Snapshot) -> list[str]:
    """Jobs still running for no live step ("no workload without a live step", DESIGN §11).

    Two kinds: the Job of a step that ended (failed, stopped, lost, or succeeded by telemetry while
    its pod lingers) more than STOP_GRACE_SECONDS ago, and the Job of an earlier run of a step that
    is in a later run now. Finished Jobs are left to their TTL (their pods keep the logs).
    """
    from queues.models import QueueRequest, StepState

    running = {name: job for name, job in snapshot.jobs.items() if _still_running(job)}
    if not running:
        return []
    ended_before = timezone.now() - timedelta(seconds=settings.STOP_GRACE_SECONDS)
    rows = QueueRequest.objects.filter(job_name__in=list(running)).values_list("job_name", "state", "finished_at")
    current = {name: (state, finished) for name, state, finished in rows}
    _, known_steps = known_in_database(Snapshot(jobs=running))
    leftovers = []
    for name, job in running.items():
        if name in current:
            state, finished = current[name]
            if state in StepState.TERMINAL and finished is not None and finished <= ended_before:
                leftovers.append(name)
        elif _step_key(job) in known_steps:
            leftovers.append(name)  # an earlier run of a step the database has moved past
    return sorted(leftovers)


def delete_leftovers(launcher, snapshot: Snapshot) -> list[str]:
    """Delete the Jobs find_leftovers names (with their pods); returns them."""
    leftovers = find_leftovers(snapshot)
    for name in leftovers:
        logger.warning("deleting the Job of a step that ended", extra={"job_name": name})
        launcher.delete_job(name)
    return leftovers
