"""Issue #13, Kubernetes product fixes: errors classified as real servers mean them, pod logs with sidecars,
and one client configuration for the launcher, reconcile and readiness.

Against the emulator made as strict as a real API server (TLS, sidecar containers, expiring continue
tokens, quota 403s); a real cluster gives the same answers (README, "Running steps as Kubernetes Jobs › Tests").
"""
from __future__ import annotations

import json

import pytest

from jobs.launchers.base import LaunchError, Phase
from queues.models import QueueRequest, StepState
from tests.emulators.kube import JobController, KubeCluster

JOBS = r"/apis/batch/v1/namespaces/[^/]+/jobs$"


def first_step(queue):
    return queue.steps.select_related("queue").order_by("position").first()


@pytest.fixture
def tls_cluster():
    with KubeCluster(tls=True) as cluster:
        yield cluster


@pytest.fixture
def from_settings(settings, k8s_settings):
    """Point the product's settings at a cluster; returns a launcher built the way production builds it."""
    from jobs.launchers.kubernetes import KubernetesLauncher

    def build(cluster, *, ca_file=None):
        settings.K8S_API_URL, settings.K8S_API_TOKEN, settings.KUBECONFIG = cluster.url, cluster.token, None
        settings.K8S_API_CA_CERT = ca_file
        launcher = KubernetesLauncher.from_settings()
        launcher.backoff, launcher.max_delay = 0.01, 0.05
        return launcher

    return build


# --------------------------------------------------------------------------- TLS: a configuration error


def test_it_fails_a_launch_clearly_and_at_once_on_a_certificate_it_cannot_verify(
    tls_cluster, from_settings, historical_queue
):
    """Case "a TLS/certificate failure is a configuration error, not transient": no CA for the server's
    certificate → a permanent LaunchError that says TLS, after one attempt (no retries)."""
    launcher = from_settings(tls_cluster)  # no K8S_API_CA_CERT
    with pytest.raises(LaunchError) as caught:
        launcher.launch(first_step(historical_queue))
    assert caught.value.permanent is True
    assert "TLS" in str(caught.value) and "certificate verify failed" in str(caught.value).lower()


def test_it_fails_the_step_with_the_tls_reason_instead_of_retrying(
    tls_cluster, from_settings, historical_queue, settings
):
    """Case "fail clearly (the step fails with a clear reason, not retried forever)"."""
    from jobs import scheduler
    from jobs.launchers import _build as build_launcher
    from jobs.launching import step_launch

    from_settings(tls_cluster)
    settings.JOB_LAUNCHER, settings.KAFKA_ENABLED = "kubernetes", False
    build_launcher.cache_clear()
    try:
        scheduler.queue_advance(historical_queue.pk)
        launching = QueueRequest.objects.filter(queue=historical_queue, state=StepState.LAUNCHING).first()
        assert step_launch(launching.pk) == "failed"
    finally:
        build_launcher.cache_clear()
    launching.refresh_from_db()
    assert launching.state == StepState.FAILED and "TLS" in launching.message
    assert launching.launch_attempts == 1


def test_it_launches_over_tls_with_the_configured_ca(tls_cluster, from_settings, historical_queue):
    """Case "readiness uses the same client configuration as the launcher (CA)": the launcher half."""
    launcher = from_settings(tls_cluster, ca_file=tls_cluster.ca_file)
    assert launcher.launch(first_step(historical_queue))["created"] is True


def test_readiness_uses_the_launchers_ca_and_reports_a_tls_failure(tls_cluster, from_settings, settings):
    """Case "readiness uses the same client configuration as the launcher (CA, token refresh), built in
    one place" and "show it [the TLS failure] in readiness"."""
    from ops.health import check_kubernetes, run_checks

    settings.JOB_LAUNCHER = "kubernetes"
    from_settings(tls_cluster, ca_file=tls_cluster.ca_file)
    assert run_checks({"kubernetes": check_kubernetes})["kubernetes"]["ok"] is True
    settings.K8S_API_CA_CERT = None
    failed = run_checks({"kubernetes": check_kubernetes})["kubernetes"]
    assert failed["ok"] is False and "TLS" in failed["error"] and "configuration" in failed["error"]


def test_one_function_builds_the_client_for_launcher_and_readiness(settings, k8s_settings, tls_cluster, monkeypatch):
    """Case "one function that builds the ApiClient, used by launcher, reconcile and readiness"."""
    from jobs import k8s_client
    from jobs.launchers.kubernetes import KubernetesLauncher
    from ops.health import check_kubernetes

    settings.K8S_API_URL, settings.K8S_API_TOKEN, settings.KUBECONFIG = tls_cluster.url, tls_cluster.token, None
    settings.K8S_API_CA_CERT = tls_cluster.ca_file
    built = []
    real = k8s_client.api_client_from_settings
    monkeypatch.setattr(k8s_client, "api_client_from_settings", lambda: built.append(1) or real())
    KubernetesLauncher.from_settings()
    check_kubernetes()
    assert len(built) == 2


# --------------------------------------------------------------------------- 403: quota or RBAC


def quota_status(name):
    message = (f'jobs.batch "{name}" is forbidden: exceeded quota: compute-resources, requested: count/jobs.batch=1, '
               "used: count/jobs.batch=20, limited: count/jobs.batch=20")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Forbidden", "details": {"name": name, "group": "batch", "kind": "jobs"}, "code": 403}


def test_it_retries_a_403_exceeded_quota(launcher, emulator, historical_queue):
    """Case "`403 … exceeded quota` is retried with backoff (a quota frees up)"."""
    step = first_step(historical_queue)
    emulator.fail_next("POST", JOBS, 403, times=2, body=quota_status(step.job_name))
    assert launcher.launch(step)["created"] is True
    assert len(emulator.requests_matching("POST", JOBS)) == 3


def test_a_quota_that_stays_exceeded_is_a_transient_launch_error(launcher, emulator, historical_queue):
    """Case "`403 … exceeded quota` is retried": when it lasts, the caller's own retry takes over."""
    step = first_step(historical_queue)
    emulator.fail_next("POST", JOBS, 403, times=100, body=quota_status(step.job_name))
    with pytest.raises(LaunchError) as caught:
        launcher.launch(step)
    assert caught.value.permanent is False and "exceeded quota" in str(caught.value)


def test_any_other_403_is_permanent(launcher, kube, historical_queue, tmp_path):
    """Case "other 403s are permanent": a Role without `create` on Jobs (RBAC) is not retried."""
    from jobs.launchers.kubernetes import KubernetesLauncher

    cluster = kube.emulator
    if cluster is None:
        pytest.skip("needs the emulated cluster (binds a reduced Role)")
    token = cluster.bind_rbac(read_only_role(tmp_path), namespace=kube.namespace)
    reader = KubernetesLauncher(cluster.api_client(token), namespace=kube.namespace, backoff=0.01)
    cluster.requests.clear()
    with pytest.raises(LaunchError) as caught:
        reader.launch(first_step(historical_queue))
    assert caught.value.permanent is True and "cannot create resource" in str(caught.value)
    assert len(cluster.requests_matching("POST", r"/jobs$")) == 1  # refused once, not retried
    assert cluster.requests_matching("POST", r"/secrets$") == []  # no Secret for a Job never created


def read_only_role(directory):
    text = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules:
  - {apiGroups: ["batch"], resources: ["jobs"], verbs: ["get", "list"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: reader}]
"""
    path = directory / "reader.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- 410: expired continue token


def test_it_restarts_a_listing_whose_continue_token_expired(launcher, emulator, controller, historical_queue,
                                                            monkeypatch):
    """Case "an expired list `continue` token (410 Gone, reason Expired) restarts the listing in the same pass"."""
    monkeypatch.setattr("jobs.launchers.kubernetes_api.LIST_PAGE", 2)
    steps = list(historical_queue.steps.select_related("queue").order_by("position"))[:5]
    for step in steps:
        launcher.launch(step)
    emulator.requests.clear()
    emulator.expire_continue_tokens(after_pages=1)  # compaction right after the first page

    observations = launcher.observe_many(steps, handle_orphans=False)

    assert all(observations[s.pk].phase == Phase.PENDING for s in steps)
    job_lists = [r for r in emulator.requests if r[1].endswith("/jobs")]
    assert any("continue" in r[2] for r in job_lists)  # it did page, and met the 410 ...
    assert [r[2].get("continue") for r in job_lists].count(None) == 2  # ... then listed again from the start
    assert sorted(j["metadata"]["name"] for j in launcher.list_labelled("jobs")) == sorted(s.job_name for s in steps)


def test_the_emulator_answers_an_expired_token_as_a_real_server(kube, emulator, launcher, historical_queue):
    """The 410 the restart relies on: reason Expired and a fresh (inconsistent) continue token."""
    import kubernetes
    from kubernetes.client import ApiException

    for step in list(historical_queue.steps.select_related("queue").order_by("position"))[:3]:
        launcher.launch(step)
    batch = kubernetes.client.BatchV1Api(kube.api_client)
    first = batch.list_namespaced_job(kube.namespace, limit=1)
    emulator.expire_continue_tokens()
    with pytest.raises(ApiException) as caught:
        batch.list_namespaced_job(kube.namespace, limit=1, _continue=first.metadata._continue)
    status = json.loads(caught.value.body)
    assert caught.value.status == 410 and status["reason"] == "Expired" and status["metadata"]["continue"]


# --------------------------------------------------------------------------- logs with a sidecar


def test_it_reads_the_step_containers_log_beside_an_injected_sidecar(launcher, kube, historical_queue):
    """Case "Pod logs with sidecars": an Istio/Linkerd proxy makes two containers; the log must name the
    step's container, or the API server answers 400 "a container name must be specified"."""
    if kube.emulator is None:
        pytest.skip("needs the emulated cluster (injects the sidecar)")
    controller = JobController(kube.emulator, kube.namespace, sidecars=("istio-proxy",))
    step = first_step(historical_queue)
    launcher.launch(step)
    pod = controller.create_pod_for(step.job_name, "Running")
    assert [c["name"] for c in pod["spec"]["containers"]] == [step.target, "istio-proxy"]
    controller.set_pod_log(pod, "loading candles\nwrote 8640 records\n")
    controller.set_pod_log(pod, "envoy proxy ready\n", container="istio-proxy")

    text = launcher.logs(step, tail_bytes=4000)

    assert "wrote 8640 records" in text and "envoy" not in text and "no log" not in text
