"""Runs each step as a Kubernetes Job, with the official `kubernetes` client.

Idempotent by construction: the Job name is the step's stable `job_name`, so a duplicated launch
task meets `409 AlreadyExists` and, if the existing Job carries this step's labels, treats it as
"already launched". Every call goes through KubernetesApi (jobs/launchers/kubernetes_api.py): transient
API trouble is retried there and then surfaces as a transient LaunchError for the caller's own retry; a
TLS failure is a configuration error and fails at once.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from kubernetes.client.exceptions import ApiException

from jobs import k8s_client, k8s_reconcile
from jobs.credentials import SECRET_KEY_NAME, secret_name, step_credential_issue
from jobs.launchers.base import LaunchError, Observation
from jobs.launchers.kubernetes_api import KubernetesApi, refused
from jobs.manifests import LABEL_MANAGED_BY, LABEL_QUEUE, LABEL_STEP, job_manifest, step_labels, step_selector

logger = logging.getLogger(__name__)

STOP_SELECTOR_STEPS = 50  # step names per delete-collection selector (keeps the request line short)
_POOL_LOCK = threading.Lock()


class KubernetesLauncher(KubernetesApi):
    """The launcher interface in terms of Jobs, their credential Secrets and pods; the API access it
    stands on (retries, raw bodies, paged lists) is KubernetesApi's, so reconcile and the watcher list
    through the launcher they are given."""

    name = "kubernetes"
    _pool, _pool_pid, _pool_width = None, None, 0  # launch_many's threads, per instance (_launch_pool)

    @classmethod
    def from_settings(cls) -> KubernetesLauncher:
        """The client from k8s_client (the one configuration readiness uses too)."""
        return cls(k8s_client.api_client_from_settings(), namespace=settings.K8S_NAMESPACE,
                   backoff=settings.LAUNCH_RETRY_BACKOFF_SECONDS)

    # ------------------------------------------------------------------ Launcher interface

    def manifest(self, step) -> dict:
        return job_manifest(step)

    def launch(self, step) -> dict:
        """Two API calls: the Job, then its telemetry credential Secret, owned by the Job from creation.

        The Job goes first so that the Secret's create can name it as owner (`ownerReferences` with its
        uid) — no third call to patch the owner in. Its pod may therefore exist a moment before the
        Secret: the kubelet holds the container in `CreateContainerConfigError` and retries until the
        Secret exists, and the step is `launching` until this returns, so reconcile never judges it
        meanwhile. If the Secret cannot be created, a transient error leaves the Job for the retry
        (409 adopts it, the Secret follows); a permanent one deletes the Job before raising.
        """
        try:
            job = json.loads(self._post(f"/apis/batch/v1/namespaces/{self.namespace}/jobs", job_manifest(step))
                             or b"{}")
            created = True
        except ApiException as exc:
            if exc.status != 409:
                raise refused(f"creating Job {step.job_name}", exc) from exc
            job, created = self._adopt_existing(step), False
        try:
            self._create_credential_secret(step, job)
        except LaunchError as exc:
            if exc.permanent:
                self._remove_unstartable(step.job_name)
            raise
        logger.info("job launched" if created else "job already launched",
                    extra={"job_name": step.job_name, "namespace": self.namespace})
        return {
            "launcher": self.name,
            "namespace": self.namespace,
            "job_name": step.job_name,
            "uid": job["metadata"].get("uid", ""),
            "created": created,
        }

    def launch_many(self, steps) -> list:
        """`launch` of several steps at once, each on a thread (at most K8S_LAUNCH_CONCURRENCY, within
        the client's connection pool): one step's two calls stay in order, different steps' overlap. Per
        step its handle or the exception its launch raised (one failure never stops another launch)."""
        def one(step):
            try:
                return self.launch(step)
            except Exception as exc:  # noqa: BLE001 — the caller handles it as that step's failed attempt
                return exc

        if len(steps) <= 1:
            return [one(step) for step in steps]
        return list(self._launch_pool().map(one, steps))

    def _launch_pool(self) -> ThreadPoolExecutor:
        """The process's launch threads, made once: starting a thread per launch cost more than its
        request on a loaded node. A forked child (a prefork worker's) makes its own. Its width is
        K8S_LAUNCH_CONCURRENCY: the API server limits the requests it serves at once (a client beyond
        them waits or meets 429), and each thread costs the worker CPU for every hand-over of the GIL."""
        width = max(1, min(settings.K8S_LAUNCH_CONCURRENCY, self.api_client.configuration.connection_pool_maxsize or 1))
        with _POOL_LOCK:
            if self._pool is None or self._pool_pid != os.getpid() or self._pool_width != width:
                self._pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="launch")
                self._pool_pid, self._pool_width = os.getpid(), width
            return self._pool

    def _create_credential_secret(self, step, job: dict) -> None:
        """The step run's telemetry credential, in a Secret the Job owns from its creation on, so the
        garbage collector deletes it with the Job (stop, TTL) — and also when the Job is already gone
        by the time the Secret is created (an owner verified absent).

        409 means an earlier attempt of this launch created it; the value is deterministic, so it
        stands, and its owner is set to this Job (it may predate it: an attempt that died between the
        two creates of an earlier Job of the name). Only create/patch/delete on Secrets are needed: the
        manager never reads a Secret back.
        """
        name = secret_name(step.job_name)
        try:
            self._post(f"/api/v1/namespaces/{self.namespace}/secrets",
                       credential_secret(step, job, namespace=self.namespace))
        except ApiException as exc:
            if exc.status != 409:
                raise refused(f"creating Secret {name}", exc) from exc
            self._own_credential_secret(name, job)

    def _own_credential_secret(self, name: str, job: dict) -> None:
        """Make `job` the owner of the existing Secret `name` (the rare path after a 409)."""
        try:
            # A merge patch: the generated patch method would send a JSON patch for this dict.
            self._call(
                self.api_client.call_api, f"/api/v1/namespaces/{self.namespace}/secrets/{name}", "PATCH",
                header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
                body={"metadata": {"ownerReferences": [job_owner(job)]}}, auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise LaunchError(f"Secret {name} vanished while launching; retry") from exc
            raise refused(f"making Job {job['metadata']['name']} the owner of Secret {name}", exc) from exc

    def _remove_unstartable(self, job_name: str) -> None:
        """Delete a Job whose Secret can never be created: its pod would wait for it forever. Best
        effort — the failed step's discard deletes it too."""
        try:
            self.delete_job(job_name)
        except LaunchError:
            logger.warning("could not delete the Job of a failed launch; its discard will",
                           extra={"job_name": job_name}, exc_info=True)

    def _adopt_existing(self, step) -> dict:
        """After 409: our own Job for this step means "already launched"; anything else is a clash."""
        job = self._read_job(step.job_name)
        if job is None:
            raise LaunchError(f"Job {step.job_name} existed and vanished while launching; retry")
        labels = job["metadata"].get("labels") or {}
        expected = step_labels(step)
        if any(labels.get(key) != expected[key] for key in (LABEL_MANAGED_BY, LABEL_QUEUE, LABEL_STEP)):
            raise LaunchError(
                f"a Job named {step.job_name} exists in {self.namespace} but was not created for this step",
                permanent=True,
            )
        if job["metadata"].get("deletionTimestamp"):
            raise LaunchError(f"the previous Job {step.job_name} is still being deleted; retry")
        return job

    def status(self, step) -> Observation:
        job = self._read_job(step.job_name)
        if job is None:
            return k8s_reconcile.observe_job(None, [])
        pods = self.list_labelled("pods", f"job-name={step.job_name}")
        return k8s_reconcile.observe_job(job, pods)

    def observe_many(self, steps, *, handle_orphans: bool = True) -> dict[int, Observation]:
        """Observe many steps from one snapshot (2 list calls), reporting orphans on the way."""
        snapshot = k8s_reconcile.cluster_snapshot(self)
        observations = {
            step.pk: k8s_reconcile.observe_job(snapshot.jobs.get(step.job_name), snapshot.pods_of(step.job_name))
            for step in steps
        }
        if handle_orphans:
            # The Jobs of the steps just observed are live steps' own: neither orphans nor
            # leftovers. Only the rest (usually none) is looked up in the database.
            rest = snapshot.without(step.job_name for step in steps)
            try:
                k8s_reconcile.handle_orphans(self, rest)
                k8s_reconcile.delete_leftovers(self, rest)
            except LaunchError:
                logger.exception("could not handle orphan or leftover Jobs this pass")
        return observations

    def stop(self, step, *, force: bool) -> None:
        """Graceful stop is a Kafka command sent by the stop flow; force removes Job and pods."""
        if not force:
            return
        names = {step.job_name} | {j["metadata"]["name"] for j in self.list_labelled("jobs", step_selector(step))}
        for name in sorted(names):
            self.delete_job(name)
        self._delete_leftover_pods(step_selector(step))

    def stop_many(self, steps, *, force: bool) -> None:
        """Force, for many steps: per queue, ONE delete-collection of the Jobs carrying the queue's label and
        one of these steps' names (every run of them, no other step's Job), then the leftover pods. With
        Background propagation the server removes the Jobs at once and the garbage collector their pods
        and owned credential Secrets (an ownerless Secret goes with the step's discard once it ends)."""
        if not force:
            return
        by_queue: dict[str, list] = {}
        for step in steps:
            by_queue.setdefault(step.queue.queue_id, []).append(step)
        for group in by_queue.values():
            for start in range(0, len(group), STOP_SELECTOR_STEPS):
                selector = steps_selector(group[start:start + STOP_SELECTOR_STEPS])
                try:
                    self._call(self.batch.delete_collection_namespaced_job, self.namespace, label_selector=selector,
                               propagation_policy="Background")
                except ApiException as exc:
                    raise refused(f"deleting the Jobs of {selector}", exc) from exc
                logger.info("jobs deleted", extra={"selector": selector, "namespace": self.namespace})
                self._delete_leftover_pods(selector)

    def discard(self, step) -> None:
        """This run's Job only (its pods go with it): a later run of the step keeps its own."""
        self.delete_job(step.job_name)

    def delete_job(self, name: str) -> None:
        """Delete a Job; Background propagation makes the garbage collector remove all its pods."""
        try:
            self._call(self.batch.delete_namespaced_job, name, self.namespace, propagation_policy="Background")
            logger.info("job deleted", extra={"job_name": name, "namespace": self.namespace})
        except ApiException as exc:
            if exc.status != 404:
                raise refused(f"deleting Job {name}", exc) from exc
        # The garbage collector removes the owned credential Secret too, a moment later; deleting it
        # here makes it go now, and covers one without an owner (left by launches that created the
        # Secret before the Job and died in between).
        try:
            self._call(self.core.delete_namespaced_secret, secret_name(name), self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise refused(f"deleting Secret {secret_name(name)}", exc) from exc

    def _delete_leftover_pods(self, selector: str) -> None:
        """Pods with our step labels that no Job owns any more (a Job deleted with Orphan propagation).

        Pods owned by a deleted Job are removed by the garbage collector; deleting them here too
        would need `pods/delete`, which the least-privilege Role does not grant. Orphans need it, so
        a 403 is reported rather than raised.
        """
        for pod in self.list_labelled("pods", selector):
            meta = pod["metadata"]
            owned = any(ref.get("kind") == "Job" for ref in meta.get("ownerReferences") or [])
            if owned or meta.get("deletionTimestamp"):
                continue
            try:
                self._request(self.core.delete_namespaced_pod, meta["name"], self.namespace)
            except ApiException as exc:
                if exc.status == 403:
                    logger.warning("no permission to delete orphaned pod", extra={"pod": meta["name"]})
                elif exc.status != 404:
                    raise refused(f"deleting pod {meta['name']}", exc) from exc

    def logs(self, step, *, tail_bytes: int) -> str:
        """The tail of every pod's log of the step, oldest pod first, each headed by its name."""
        pods = k8s_reconcile.newest_first(self.list_labelled("pods", f"job-name={step.job_name}"))
        if not pods or tail_bytes <= 0:
            return ""
        share = max(tail_bytes // len(pods), 256)
        parts = []
        for pod in reversed(pods):
            name = pod["metadata"]["name"]
            parts.append(f"==> {name} <==\n{self._pod_log(name, step_container(pod, step), share)}")
        return _tail("\n".join(parts), tail_bytes)

    def _pod_log(self, pod_name: str, container: str, tail_bytes: int) -> str:
        # tailLines bounds the transfer; the exact byte tail is cut here (limitBytes counts from the start).
        tail_lines = max(100, tail_bytes // 20)
        try:
            # Always name the container: an injected sidecar (Istio, Linkerd) makes the name mandatory.
            response = self._request(self.core.read_namespaced_pod_log, pod_name, self.namespace,
                                     container=container, tail_lines=tail_lines, _preload_content=False)
        except ApiException as exc:
            if exc.status in (400, 404):  # container not started yet, or pod gone meanwhile
                return f"(no log: {k8s_client.status_message(exc)})\n"
            raise refused(f"reading log of pod {pod_name}", exc) from exc
        return _tail(response.data.decode("utf-8", errors="replace"), tail_bytes)


def steps_selector(steps) -> str:
    """Every run's Jobs and pods of these steps of one queue: `step_selector` with the step names as a set."""
    labels = [step_labels(step) for step in steps]
    names = ",".join(sorted({entry[LABEL_STEP] for entry in labels}))
    return f"{LABEL_MANAGED_BY}={labels[0][LABEL_MANAGED_BY]},{LABEL_QUEUE}={labels[0][LABEL_QUEUE]},{LABEL_STEP} in ({names})"


def job_owner(job: dict) -> dict:
    """An owner reference to a created Job (its uid pins this very Job, not a later one of the name)."""
    return {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "uid": job["metadata"]["uid"]}


def credential_secret(step, job: dict, *, namespace: str) -> dict:
    """The Secret holding the step run's telemetry credential, labelled like its Job and owned by it."""
    token = step_credential_issue(step=step)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret_name(step.job_name), "namespace": namespace, "labels": step_labels(step),
                     "ownerReferences": [job_owner(job)]},
        "data": {SECRET_KEY_NAME: base64.b64encode(token.encode()).decode()},
    }


def step_container(pod: dict, step) -> str:
    """The step's own container in `pod`: the one the manifest named (the step's target), else the
    pod's default-container annotation, else the first (sidecar injectors add theirs around it)."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if step.target in names:
        return step.target
    default = ((pod.get("metadata") or {}).get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
    return default if default in names else (names[0] if names else step.target)


def _tail(text: str, tail_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= tail_bytes:
        return text
    return data[-tail_bytes:].decode("utf-8", errors="ignore")
