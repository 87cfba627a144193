"""Kubernetes fixtures: the emulated API server by default, a real cluster when K8S_CONTRACT_KUBECONFIG is set.

The launcher acts as the deploy service account (deploy/rbac.yaml, applied in the test namespace), on
the emulator as on a real cluster, so every launcher test also proves the Role is enough. `kube.api_client`
is the admin, for setting up and inspecting. Tests that need to play the Job controller (move pods through
phases, inject faults) take the `controller` or `emulator` fixture, which skips them on a real cluster.
"""
from __future__ import annotations

from dataclasses import dataclass

import kubernetes
import pytest

from tests.emulators.kube import JobController, KubeCluster
from tests.emulators.kube_contract import kube_target


@dataclass
class Kube:
    api_client: kubernetes.client.ApiClient  # admin: set-up and inspection
    namespace: str
    emulator: KubeCluster | None = None
    manager_client: kubernetes.client.ApiClient | None = None  # the deploy service account


@pytest.fixture(params=["emulator", "real"])
def kube(request):
    with kube_target(request.param) as target:
        yield Kube(target.admin, target.namespace, target.emulator, target.api_client)


@pytest.fixture
def emulator(kube):
    if kube.emulator is None:
        pytest.skip("needs the emulated cluster (fault injection)")
    return kube.emulator


@pytest.fixture
def controller(kube):
    if kube.emulator is None:
        pytest.skip("needs the emulated cluster (plays the Job controller)")
    return JobController(kube.emulator, namespace=kube.namespace)


@pytest.fixture
def k8s_settings(settings, kube):
    settings.K8S_NAMESPACE = kube.namespace
    settings.K8S_MANAGER_ID = "queue-manager-test"
    settings.K8S_CREDENTIALS_SECRET = "streamforge-credentials"
    settings.K8S_CA_CONFIGMAP = ""
    settings.K8S_IMAGE_REGISTRY = "registry.example/streamforge"
    settings.K8S_IMAGE_TAG = "1.2.3"
    settings.K8S_DELETE_ORPHANS = False
    return settings


@pytest.fixture
def launcher(kube, k8s_settings):
    from jobs.launchers.kubernetes import KubernetesLauncher

    launcher = KubernetesLauncher(kube.manager_client, namespace=kube.namespace, backoff=0.01, max_delay=0.05)
    yield launcher
    if kube.emulator is None:  # leave a real cluster as we found it
        for job in launcher.list_labelled("jobs"):
            launcher.delete_job(job["metadata"]["name"])


@pytest.fixture
def make_queue(db):
    from jobs.submission import queue_create

    def make(payload: dict):
        queue, _ = queue_create(payload=payload)
        return queue

    return make


@pytest.fixture
def historical_queue(make_queue, historical_payload):
    return make_queue(historical_payload)


@pytest.fixture
def realtime_queue(make_queue, realtime_payload):
    return make_queue(realtime_payload)
