"""KubernetesLauncher against the emulated API server (or a real cluster with KUBECONFIG)."""
from __future__ import annotations

import threading

import pytest

from jobs.launchers.base import LaunchError, Phase
from jobs.manifests import job_manifest
from tests.helpers import wait_until

JOBS = r"/apis/batch/v1/namespaces/[^/]+/jobs$"


def first_step(queue):
    return queue.steps.select_related("queue").order_by("position").first()


def jobs_of(launcher, step):
    return [j for j in launcher.list_labelled("jobs") if j["metadata"]["name"] == step.job_name]


def test_it_creates_the_job_from_the_manifest(launcher, historical_queue, kube):
    step = first_step(historical_queue)
    handle = launcher.launch(step)
    assert handle["job_name"] == step.job_name and handle["created"] is True and handle["uid"]
    job = jobs_of(launcher, step)[0]
    expected = job_manifest(step)
    assert job["metadata"]["labels"] == expected["metadata"]["labels"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == expected["spec"]["template"]["spec"]["containers"][0]["env"]


def test_it_launches_once_when_called_twice(launcher, historical_queue):
    step = first_step(historical_queue)
    first = launcher.launch(step)
    second = launcher.launch(step)
    assert second["created"] is False and second["uid"] == first["uid"]
    assert len(jobs_of(launcher, step)) == 1


def test_it_launches_once_under_a_duplicated_task(launcher, historical_queue):
    """Two workers run the same launch at the same moment: one creates, the other adopts."""
    step = first_step(historical_queue)
    handles, errors = [], []

    def run():
        try:
            handles.append(launcher.launch(step))
        except Exception as exc:  # pragma: no cover - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert sorted(h["created"] for h in handles) == [False, True]
    assert len({h["uid"] for h in handles}) == 1
    assert len(jobs_of(launcher, step)) == 1


def test_it_retries_a_500_then_succeeds(launcher, emulator, historical_queue):
    emulator.fail_next("POST", JOBS, 500)
    handle = launcher.launch(first_step(historical_queue))
    assert handle["created"] is True
    assert len(emulator.requests_matching("POST", JOBS)) == 2


def test_it_retries_a_429(launcher, emulator, historical_queue):
    emulator.fail_next("POST", JOBS, 429, times=2)
    assert launcher.launch(first_step(historical_queue))["created"] is True
    assert len(emulator.requests_matching("POST", JOBS)) == 3


def test_it_gives_up_on_a_persistent_500_with_a_transient_error(launcher, emulator, historical_queue):
    emulator.fail_next("POST", JOBS, 500, times=100)
    with pytest.raises(LaunchError) as caught:
        launcher.launch(first_step(historical_queue))
    assert caught.value.permanent is False
    assert len(emulator.requests_matching("POST", JOBS)) == launcher.attempts


def test_it_treats_a_refused_connection_as_transient(historical_queue, k8s_settings):
    import socket

    import kubernetes

    from jobs.launchers.kubernetes import KubernetesLauncher

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = kubernetes.client.Configuration()
    config.host, config.retries = f"http://127.0.0.1:{port}", 0
    launcher = KubernetesLauncher(kubernetes.client.ApiClient(config), namespace="default", attempts=2,
                                  backoff=0.01)
    with pytest.raises(LaunchError) as caught:
        launcher.launch(first_step(historical_queue))
    assert caught.value.permanent is False


@pytest.mark.parametrize("status", [400, 403, 422])
def test_it_fails_permanently_on_a_rejected_request(launcher, emulator, historical_queue, status):
    emulator.fail_next("POST", JOBS, status)
    with pytest.raises(LaunchError) as caught:
        launcher.launch(first_step(historical_queue))
    assert caught.value.permanent is True
    assert len(emulator.requests_matching("POST", JOBS)) == 1


def test_it_refuses_to_adopt_a_job_that_is_not_ours(launcher, kube, historical_queue):
    import kubernetes

    step = first_step(historical_queue)
    foreign = job_manifest(step)
    foreign["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "someone-else"}
    kubernetes.client.BatchV1Api(kube.api_client).create_namespaced_job(kube.namespace, foreign)
    try:
        with pytest.raises(LaunchError) as caught:
            launcher.launch(step)
        assert caught.value.permanent is True
        assert "not created for this step" in str(caught.value)
    finally:
        launcher.delete_job(step.job_name)


# --------------------------------------------------------------------------- status


def launched(launcher, controller, queue, position=0):
    step = queue.steps.select_related("queue").get(position=position)
    launcher.launch(step)
    return step, controller.job(step.job_name)


def test_it_reports_missing_for_a_job_that_does_not_exist(launcher, historical_queue):
    observation = launcher.status(first_step(historical_queue))
    assert observation.phase == Phase.MISSING


def test_it_reports_pending_before_any_pod(launcher, controller, historical_queue):
    step, _ = launched(launcher, controller, historical_queue)
    assert launcher.status(step).phase == Phase.PENDING


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "Unschedulable",
                                    "CreateContainerConfigError"])
def test_it_reports_pending_pods_with_their_reason(launcher, controller, historical_queue, reason):
    step, job = launched(launcher, controller, historical_queue)
    controller.create_pod_for(job, "Pending", reason)
    observation = launcher.status(step)
    assert observation.phase == Phase.PENDING
    assert observation.reason == reason
    if reason == "Unschedulable":
        assert "Insufficient cpu" in observation.details["message"]


def test_it_reports_running(launcher, controller, realtime_queue):
    step, job = launched(launcher, controller, realtime_queue)
    controller.mark_running(job)
    observation = launcher.status(step)
    assert observation.phase == Phase.RUNNING and observation.reason == ""


def test_it_reports_a_crash_loop_with_the_last_exit(launcher, controller, realtime_queue):
    step, job = launched(launcher, controller, realtime_queue)
    controller.create_pod_for(job, "Running", "CrashLoopBackOff")
    observation = launcher.status(step)
    assert observation.phase == Phase.RUNNING
    assert observation.reason == "CrashLoopBackOff"
    assert "last exit: Error" in observation.details["message"]


def test_it_reports_succeeded_with_exit_code_zero(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    controller.mark_succeeded(job)
    observation = launcher.status(step)
    assert observation.phase == Phase.SUCCEEDED and observation.exit_code == 0


def test_it_reports_backoff_limit_exceeded(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    controller.mark_failed(job)
    observation = launcher.status(step)
    assert observation.phase == Phase.FAILED
    assert "BackoffLimitExceeded" in observation.reason and "Error" in observation.reason
    assert observation.exit_code == 1


def test_it_reports_oom_killed(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    controller.create_pod_for(job, "Failed", "OOMKilled")
    controller.mark_failed(job, with_pods=False)
    observation = launcher.status(step)
    assert observation.phase == Phase.FAILED
    assert observation.reason.startswith("OOMKilled")
    assert observation.exit_code == 137


def test_it_reports_deadline_exceeded(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    controller.mark_running(job)
    controller.mark_failed(job, reason="DeadlineExceeded")
    observation = launcher.status(step)
    assert observation.phase == Phase.FAILED
    assert observation.reason == "DeadlineExceeded"
    assert "longer than specified deadline" in observation.details["message"]


def test_it_reports_missing_after_the_ttl_controller_removed_the_job(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    controller.mark_succeeded(job)
    controller.delete_job(job)
    assert launcher.status(step).phase == Phase.MISSING


# --------------------------------------------------------------------------- stop


def test_it_does_nothing_in_the_cluster_on_a_graceful_stop(launcher, controller, realtime_queue):
    step, job = launched(launcher, controller, realtime_queue)
    controller.mark_running(job)
    launcher.stop(step, force=False)
    assert launcher.status(step).phase == Phase.RUNNING


def test_it_force_stops_the_job_with_all_its_pods(launcher, controller, realtime_queue):
    step, job = launched(launcher, controller, realtime_queue)
    controller.create_pod_for(job, "Failed", "Error")
    controller.create_pod_for(job, "Running", "CrashLoopBackOff")
    controller.create_pod_for(job, "Pending", "Unschedulable")
    other, other_job = launched(launcher, controller, realtime_queue, position=1)
    controller.mark_running(other_job)

    launcher.stop(step, force=True)

    assert launcher.status(step).phase == Phase.MISSING  # the Job goes at once ...
    wait_until(lambda: controller.pods(job) == [], message="the garbage collector removed the pods")  # ... pods later
    assert controller.jobs(f"job-name={step.job_name}") == []
    assert not [j for j in controller.jobs() if j["metadata"]["name"] == step.job_name]
    assert launcher.status(other).phase == Phase.RUNNING  # nothing else touched


def test_it_force_stops_pods_a_deleted_job_left_behind(launcher, controller, kube, realtime_queue):
    """With a Role that grants `pods/delete` (here the admin), pods a Job deleted with Orphan propagation
    left behind are removed too."""
    from jobs.launchers.kubernetes import KubernetesLauncher

    step, job = launched(launcher, controller, realtime_queue)
    controller.create_pod_for(job, "Running")
    kube.emulator.store.delete("jobs", kube.namespace, step.job_name, propagation="Orphan")
    assert len(controller.pods(label_selector=f"job-name={step.job_name}")) == 1

    KubernetesLauncher(kube.api_client, namespace=kube.namespace).stop(step, force=True)

    wait_until(lambda: controller.pods(label_selector=f"job-name={step.job_name}") == [],
               message="the orphaned pod terminated and went")


def test_as_the_deploy_role_it_reports_an_orphaned_pod_it_may_not_delete(launcher, controller, kube, realtime_queue,
                                                                          caplog):
    """Issue #13 (RBAC enforced): deploy/rbac.yaml grants no `delete` on pods, so the force stop reports
    the orphaned pod (a warning) and still completes; the garbage collector handles owned pods."""
    import logging

    step, job = launched(launcher, controller, realtime_queue)
    controller.create_pod_for(job, "Running")
    kube.emulator.store.delete("jobs", kube.namespace, step.job_name, propagation="Orphan")
    caplog.set_level(logging.WARNING, logger="jobs.launchers.kubernetes")

    launcher.stop(step, force=True)

    assert any("no permission to delete orphaned pod" in r.getMessage() for r in caplog.records)
    assert len(controller.pods(label_selector=f"job-name={step.job_name}")) == 1


def test_it_force_stops_idempotently(launcher, realtime_queue):
    step = first_step(realtime_queue)
    launcher.stop(step, force=True)  # nothing launched: 404 is "already gone"
    launcher.launch(step)
    launcher.stop(step, force=True)
    launcher.stop(step, force=True)
    assert jobs_of(launcher, step) == []


# --------------------------------------------------------------------------- logs


def test_it_returns_no_logs_without_pods(launcher, historical_queue):
    step = first_step(historical_queue)
    assert launcher.logs(step, tail_bytes=1000) == ""
    launcher.launch(step)
    assert launcher.logs(step, tail_bytes=1000) == ""


def test_it_reads_the_logs_of_every_pod_headed_by_name(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    first = controller.create_pod_for(job, "Failed", "Error")
    controller.set_pod_log(first, "attempt 1 starting\nboom\n")
    second = controller.create_pod_for(job, "Running")
    controller.set_pod_log(second, "".join(f"line {i}\n" for i in range(5000)))

    text = launcher.logs(step, tail_bytes=4000)

    assert len(text.encode()) <= 4000
    assert f"==> {first['metadata']['name']} <==\n" in text and "boom" in text
    assert f"==> {second['metadata']['name']} <==\n" in text
    assert text.rstrip().endswith("line 4999")


def test_it_explains_a_pod_that_has_no_log_yet(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    controller.create_pod_for(job, "Pending", "ImagePullBackOff")
    text = launcher.logs(step, tail_bytes=1000)
    assert "(no log:" in text and "ImagePullBackOff" in text


def test_it_keeps_log_text_that_looks_like_json(launcher, controller, historical_queue):
    step, job = launched(launcher, controller, historical_queue)
    pod = controller.create_pod_for(job, "Running")
    controller.set_pod_log(pod, '{"event": "progress", "records_written": 10}\n')
    assert '{"event": "progress", "records_written": 10}' in launcher.logs(step, tail_bytes=1000)


# --------------------------------------------------------------------------- configuration


def test_it_builds_from_an_explicit_api_url_and_token(settings, emulator, k8s_settings, historical_queue):
    from jobs.launchers.kubernetes import KubernetesLauncher

    settings.K8S_API_URL, settings.K8S_API_TOKEN, settings.KUBECONFIG = emulator.url, emulator.token, None
    launcher = KubernetesLauncher.from_settings()
    assert launcher.launch(first_step(historical_queue))["created"] is True


def test_it_builds_from_a_kubeconfig(settings, emulator, k8s_settings, historical_queue, tmp_path):
    from jobs.launchers.kubernetes import KubernetesLauncher

    settings.K8S_API_URL, settings.KUBECONFIG = None, emulator.write_kubeconfig(tmp_path / "kubeconfig")
    launcher = KubernetesLauncher.from_settings()
    assert launcher.launch(first_step(historical_queue))["created"] is True


def test_it_is_selected_by_the_job_launcher_setting(settings, emulator, k8s_settings):
    from jobs.launchers import get_launcher
    from jobs.launchers.kubernetes import KubernetesLauncher

    settings.K8S_API_URL, settings.K8S_API_TOKEN = emulator.url, emulator.token
    assert isinstance(get_launcher("kubernetes"), KubernetesLauncher)


def test_it_rejects_a_wrong_token_permanently(settings, emulator, k8s_settings, historical_queue):
    from jobs.launchers.kubernetes import KubernetesLauncher

    settings.K8S_API_URL, settings.K8S_API_TOKEN = emulator.url, "wrong-token"
    with pytest.raises(LaunchError) as caught:
        KubernetesLauncher.from_settings().launch(first_step(historical_queue))
    assert caught.value.permanent is True
