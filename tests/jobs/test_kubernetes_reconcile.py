"""Reconcile helpers: one snapshot per pass, Observations per step, orphans found and deleted."""
from __future__ import annotations

import logging

import pytest

from jobs import k8s_reconcile
from jobs.launchers.base import Phase
from jobs.manifests import job_manifest
from tests.emulators.kube import JobController
from tests.helpers import wait_until


def steps_of(queue):
    return list(queue.steps.select_related("queue").order_by("position"))


def test_it_observes_every_step_with_two_list_calls(launcher, controller, emulator, historical_queue):
    steps = steps_of(historical_queue)
    for step in steps[:5]:
        launcher.launch(step)
    controller.mark_running(steps[0].job_name)
    controller.create_pod_for(steps[1].job_name, "Pending", "ImagePullBackOff")
    controller.mark_succeeded(steps[2].job_name)
    controller.create_pod_for(steps[3].job_name, "Failed", "OOMKilled")
    controller.mark_failed(steps[3].job_name, with_pods=False)
    controller.delete_job(steps[4].job_name)  # vanished (TTL, or someone deleted it)
    emulator.requests.clear()

    observations = launcher.observe_many(steps)

    assert [r[:2] for r in emulator.requests] == [
        ("GET", "/apis/batch/v1/namespaces/default/jobs"),
        ("GET", "/api/v1/namespaces/default/pods"),
    ]
    assert all(r[2]["labelSelector"] == "app.kubernetes.io/managed-by=queue-manager-test" for r in emulator.requests)
    by_name = {step.name: observations[step.pk] for step in steps}
    phases = [by_name[s.name].phase for s in steps]
    assert phases == [Phase.RUNNING, Phase.PENDING, Phase.SUCCEEDED, Phase.FAILED, Phase.MISSING, Phase.MISSING]
    assert by_name[steps[1].name].reason == "ImagePullBackOff"
    assert by_name[steps[3].name].reason.startswith("OOMKilled")


def test_it_agrees_with_status_for_each_step(launcher, controller, realtime_queue):
    steps = steps_of(realtime_queue)
    for step in steps:
        launcher.launch(step)
    controller.mark_running(steps[0].job_name)
    controller.create_pod_for(steps[1].job_name, "Running", "CrashLoopBackOff")
    controller.create_pod_for(steps[2].job_name, "Pending", "Unschedulable")
    controller.mark_failed(steps[3].job_name, reason="DeadlineExceeded")
    observations = launcher.observe_many(steps)
    for step in steps:
        assert observations[step.pk] == launcher.status(step)


def test_it_ignores_jobs_and_pods_of_other_managers(launcher, controller, kube, historical_queue):
    import kubernetes

    step = steps_of(historical_queue)[0]
    foreign = job_manifest(step)
    foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "another-manager"
    foreign["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "another-manager"
    kubernetes.client.BatchV1Api(kube.api_client).create_namespaced_job(kube.namespace, foreign)
    try:
        controller.mark_running(step.job_name)

        snapshot = k8s_reconcile.cluster_snapshot(launcher)

        assert snapshot.jobs == {} and snapshot.pods == []
        assert launcher.observe_many([step])[step.pk].phase == Phase.MISSING
    finally:
        launcher.delete_job(step.job_name)


def test_it_follows_list_pages(launcher, monkeypatch, historical_queue):
    calls = []

    def fake_json(fn, namespace, **kwargs):
        calls.append(kwargs.get("_continue"))
        if kwargs.get("_continue") is None:
            return {"items": [{"metadata": {"name": "a"}}], "metadata": {"continue": "page-2"}}
        return {"items": [{"metadata": {"name": "b"}}], "metadata": {}}

    monkeypatch.setattr(launcher, "_json", fake_json)
    assert [i["metadata"]["name"] for i in launcher.list_labelled("jobs")] == ["a", "b"]
    assert calls == [None, "page-2"]


def make_orphan(launcher, make_queue, payload):
    """A Job this manager labelled whose queue the database no longer has."""
    queue = make_queue(payload)
    step = steps_of(queue)[0]
    launcher.launch(step)
    name = step.job_name
    queue.delete()
    return name


def test_it_reports_orphans_as_warnings_and_keeps_them_by_default(
    launcher, make_queue, historical_payload, realtime_queue, caplog
):
    orphan = make_orphan(launcher, make_queue, historical_payload)
    live = steps_of(realtime_queue)[0]
    launcher.launch(live)
    caplog.set_level(logging.WARNING, logger="jobs.k8s_reconcile")

    launcher.observe_many([live])

    snapshot = k8s_reconcile.cluster_snapshot(launcher)
    assert k8s_reconcile.find_orphans(snapshot, {live.job_name}) == [orphan]
    assert any(r.job_name == orphan for r in caplog.records if r.levelno == logging.WARNING)
    assert set(snapshot.jobs) == {orphan, live.job_name}  # not deleted without the setting


def test_it_deletes_orphans_with_their_pods_when_configured(
    launcher, kube, make_queue, historical_payload, realtime_queue, k8s_settings
):
    k8s_settings.K8S_DELETE_ORPHANS = True
    orphan = make_orphan(launcher, make_queue, historical_payload)
    if kube.emulator is not None:  # a real cluster's Job controller makes the pod itself
        JobController(kube.emulator).mark_running(orphan)
    live = steps_of(realtime_queue)[0]
    launcher.launch(live)

    launcher.observe_many([live])

    snapshot = k8s_reconcile.cluster_snapshot(launcher)
    assert set(snapshot.jobs) == {live.job_name}
    wait_until(lambda: k8s_reconcile.cluster_snapshot(launcher).pods_of(orphan) == [],
               message="the garbage collector removed the orphan's pods")


def test_it_does_not_call_a_finished_steps_job_an_orphan(launcher, kube, historical_queue, k8s_settings):
    k8s_settings.K8S_DELETE_ORPHANS = True
    step = steps_of(historical_queue)[0]
    launcher.launch(step)
    if kube.emulator is not None:
        JobController(kube.emulator).mark_succeeded(step.job_name)

    launcher.observe_many([])  # the step is terminal: reconcile no longer asks about it

    assert step.job_name in k8s_reconcile.cluster_snapshot(launcher).jobs


def test_it_keeps_an_earlier_runs_job_of_a_retried_step_and_force_stop_removes_every_run(
    launcher, kube, historical_queue, k8s_settings
):
    from queues import naming
    from queues.models import QueueRequest

    k8s_settings.K8S_DELETE_ORPHANS = True
    step = steps_of(historical_queue)[0]
    launcher.launch(step)
    first_run_job = step.job_name
    if kube.emulator is not None:  # a retried run ended; its finished Job waits for its TTL
        JobController(kube.emulator).mark_failed(first_run_job)
    QueueRequest.objects.filter(pk=step.pk).update(
        run=2, job_name=naming.job_name(historical_queue.queue_id, step.target, step.number, 2))
    step = steps_of(historical_queue)[0]
    launcher.launch(step)

    launcher.observe_many([step])

    snapshot = k8s_reconcile.cluster_snapshot(launcher)
    assert set(snapshot.jobs) == {first_run_job, step.job_name}
    assert snapshot.jobs[step.job_name]["metadata"]["labels"]["streamforge.io/run"] == "2"
    launcher.stop(step, force=True)
    assert k8s_reconcile.cluster_snapshot(launcher).jobs == {}


def test_a_job_that_failed_on_1_31_is_not_a_leftover_to_delete(launcher, kube, historical_queue, settings):
    """Issue #13 "Job conditions as the real controller sets them (1.31)": FailureTarget comes before
    Failed; such a Job has ended and waits for its TTL (its pods keep the logs) — it is not deleted
    as the running Job of an ended step."""
    from datetime import timedelta

    from django.utils import timezone

    from queues.models import StepState
    from tests.jobs.helpers import put

    if kube.emulator is None:
        pytest.skip("needs the emulated cluster (plays the 1.31 Job controller)")
    kube.emulator.version = (1, 31)
    controller = JobController(kube.emulator, kube.namespace)
    step = steps_of(historical_queue)[0]
    launcher.launch(step)
    controller.mark_running(step.job_name)
    failed = controller.mark_failed(step.job_name)
    assert [c["type"] for c in failed["status"]["conditions"]] == ["FailureTarget"]
    settings.STOP_GRACE_SECONDS = 30
    put(step, StepState.FAILED, finished_at=timezone.now() - timedelta(minutes=5))

    snapshot = k8s_reconcile.cluster_snapshot(launcher)

    assert k8s_reconcile.find_leftovers(snapshot) == []
