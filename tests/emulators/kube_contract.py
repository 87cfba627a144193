"""The two targets of the Kubernetes contract suite: the emulator, or a real cluster (opt-in).

A real cluster is used only when K8S_CONTRACT_KUBECONFIG names a kubeconfig (e.g. of a kind or k3d
cluster); the name is the suite's own, never KUBECONFIG or the product's K8S_API_URL, so a developer's
shell or `.env` can never point the tests at a real cluster by accident. The kubeconfig's user (an
admin) only sets up: a namespace per run with deploy/rbac.yaml applied, deleted afterwards. The
assertions run as the deploy service account (`Impersonate-User`), so they also prove the Role is enough.

Steps on a real cluster are played by a tiny public image (K8S_CONTRACT_IMAGE, default busybox:1.36)
with the commands in WORKER_COMMANDS; on the emulator, JobController plays the same outcomes.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest

from .kube import JobController, KubeCluster

TARGETS = ["emulator", "real"]
REAL_SKIP_REASON = "real cluster: set K8S_CONTRACT_KUBECONFIG to run"
RBAC_MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
SERVICE_ACCOUNT = "queue-manager"
IMAGE = os.environ.get("K8S_CONTRACT_IMAGE", "busybox:1.36")
# What each kind of step does in the worker image (`sh -c …`); "oom" runs with a 16Mi memory limit:
# tail keeps the endless line of /dev/zero in memory until the kernel kills it (OOMKilled, 137).
WORKER_COMMANDS = {
    "succeeds": "echo started; echo done",
    "fails": "echo boom >&2; exit 3",
    "sleeps": "echo sleeping; sleep 3600",
    "logs": "for i in 1 2 3; do echo line $i; done",
    "oom": "tail /dev/zero",
}


@dataclass
class KubeTarget:
    admin: kubernetes.client.ApiClient  # sets up and inspects; never used for the assertions' calls
    api_client: kubernetes.client.ApiClient  # the deploy service account
    namespace: str
    emulator: KubeCluster | None  # None on a real cluster

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{SERVICE_ACCOUNT}"


@contextlib.contextmanager
def kube_target(param: str, *, version: str = "1.30"):
    if param == "emulator":
        with KubeCluster(version=version) as cluster:
            namespace = "default"
            token = cluster.bind_rbac(RBAC_MANIFEST, namespace=namespace)
            yield KubeTarget(cluster.api_client(), cluster.api_client(token), namespace, cluster)
        return
    kubeconfig = os.environ.get("K8S_CONTRACT_KUBECONFIG")
    if not kubeconfig:
        pytest.skip(REAL_SKIP_REASON)
    admin = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    namespace = f"sfqm-contract-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "streamforge"}}})
    try:
        kubernetes.utils.create_from_yaml(admin, str(RBAC_MANIFEST), namespace=namespace)
        acting = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        acting.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
        try:
            yield KubeTarget(admin, acting, namespace, None)
        finally:
            acting.close()
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")
        admin.close()


def worker_job(name: str, kind: str, labels: dict | None = None, *, deadline: int | None = None) -> dict:
    """A Job whose pod plays `kind` (a key of WORKER_COMMANDS) with the public worker image."""
    labels = {"app.kubernetes.io/managed-by": "streamforge-contract", **(labels or {})}
    container = {"name": "worker", "image": IMAGE, "command": ["sh", "-c", WORKER_COMMANDS[kind]],
                 "resources": {"limits": {"memory": "16Mi" if kind == "oom" else "64Mi", "cpu": "100m"},
                               "requests": {"memory": "16Mi", "cpu": "10m"}}}
    spec = {"backoffLimit": 0, "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Never", "containers": [container]}}}
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels}, "spec": spec}


def play(target: KubeTarget, job_name: str, kind: str) -> None:
    """On the emulator, do what the real controller and kubelet do for a pod running `kind`."""
    if target.emulator is None:
        return  # the cluster's own controllers run the image
    ctl = JobController(target.emulator, target.namespace)
    if kind == "succeeds":
        ctl.mark_succeeded(job_name)
        ctl.set_pod_log(ctl.pods(job_name)[0], "started\ndone\n")
    elif kind == "fails":
        ctl.create_pod_for(job_name, "Failed", container_state={"terminated": {"reason": "Error", "exitCode": 3}})
        ctl.mark_failed(job_name, with_pods=False)
    elif kind == "oom":
        ctl.create_pod_for(job_name, "Failed", "OOMKilled")
        ctl.mark_failed(job_name, with_pods=False)
    elif kind == "logs":
        ctl.mark_succeeded(job_name)
        ctl.set_pod_log(ctl.pods(job_name)[0], "line 1\nline 2\nline 3\n")
    elif kind == "sleeps":
        ctl.mark_running(job_name)
        ctl.set_pod_log(ctl.pods(job_name)[0], "sleeping\n")
