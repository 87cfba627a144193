"""Both seed pipelines driven end to end through the emulated cluster with JOB_LAUNCHER=kubernetes.

The scheduler and reconcile run for real (called directly, as the Celery tasks would); the test
plays the Job controller and the workers' telemetry. Kubernetes is the only thing emulated.
"""
from __future__ import annotations

import time

import pytest

from jobs import launching, scheduler
from jobs.launchers import _build as build_launcher
from jobs.telemetry import ingest_events
from queues.models import Queue, QueueRequest, QueueStatus, StepState
from jobs.services import queue_stop
from tests.helpers import wait_until


@pytest.fixture
def k8s_pipeline(settings, k8s_settings, emulator, controller, kube):
    settings.JOB_LAUNCHER = "kubernetes"
    # The deploy service account's token (deploy/rbac.yaml): the whole pipeline runs within that Role.
    token = kube.manager_client.configuration.api_key["authorization"]
    settings.K8S_API_URL, settings.K8S_API_TOKEN, settings.KUBECONFIG = emulator.url, token, None
    settings.KAFKA_ENABLED = False
    settings.FAILURE_POLICY = "stop_queue"
    build_launcher.cache_clear()
    yield controller
    build_launcher.cache_clear()


def tick(queue: Queue) -> dict[str, str]:
    """One reconcile pass, then the launches and stop commands it enqueued (run eagerly here)."""
    scheduler.reconcile()
    for pk in QueueRequest.objects.filter(queue=queue, state=StepState.LAUNCHING).values_list("pk", flat=True):
        assert launching.step_launch(pk) == "launched"
    for pk in QueueRequest.objects.filter(queue=queue, state=StepState.STOPPING).values_list("pk", flat=True):
        scheduler.step_send_stop(pk)
    return states(queue)


def start(queue: Queue) -> dict[str, str]:
    scheduler.queue_advance(queue.pk)
    for pk in QueueRequest.objects.filter(queue=queue, state=StepState.LAUNCHING).values_list("pk", flat=True):
        launching.step_launch(pk)
    return states(queue)


def states(queue: Queue) -> dict[str, str]:
    return dict(queue.steps.order_by("position").values_list("name", "state"))


def step(queue: Queue, target: str, type_: str) -> QueueRequest:
    return queue.steps.get(target=target, type=type_)


def progress(queue: Queue, s: QueueRequest, records: int) -> None:
    result = ingest_events([{"queue_id": queue.queue_id, "telemetry_id": s.telemetry_id, "status": "progress",
                             "records_written": records, "timestamp": time.time()}])
    assert result.accepted == 1


def cluster_jobs_of(controller, queue: Queue) -> list[str]:
    return [j["metadata"]["name"] for j in controller.jobs(f"streamforge.io/queue-id={queue.queue_id}")]


def test_it_runs_the_historical_pipeline_to_success(k8s_pipeline, historical_queue):
    controller, queue = k8s_pipeline, historical_queue
    loaders = [step(queue, "loader-producer", t) for t in ("api_candles_5m", "api_trades")]
    connectors = [step(queue, "arango-connector", t) for t in ("api_candles_5m", "api_trades")]
    graph, trainer = step(queue, "graph-builder", "gnn_graph"), step(queue, "gnn-trainer", "gnn_train")

    # Consumers first: producers wait until their connector is running (DESIGN §5 rule 1).
    start(queue)
    assert {s.job_name for s in connectors} == set(cluster_jobs_of(controller, queue))
    controller.create_pod_for(connectors[0].job_name, "Pending", "ImagePullBackOff")
    tick(queue)
    assert QueueRequest.objects.get(pk=connectors[0].pk).message == "ImagePullBackOff"
    for c in connectors:
        controller.mark_running(c.job_name)
    found = tick(queue)
    assert [found[c.name] for c in connectors] == [StepState.RUNNING] * 2
    assert [found[s.name] for s in loaders] == [StepState.PENDING] * 2

    # Producers load, log, report progress and finish; the TTL controller removes them afterwards.
    for s, records in zip(loaders, (8640, 120000)):
        controller.mark_running(s.job_name)
        pod = controller.pods(s.job_name)[0]
        controller.set_pod_log(pod, f"loading {s.type}\nwrote {records} records\n")
        progress(queue, s, records)
    for c, records in zip(connectors, (8640, 120000)):
        progress(queue, c, records)
    for s in loaders:
        controller.mark_succeeded(s.job_name)
    found = tick(queue)
    assert [found[s.name] for s in loaders] == [StepState.SUCCEEDED] * 2
    # Connectors caught up with their producers: drained (stop command, then they finish).
    assert [found[c.name] for c in connectors] == [StepState.STOPPING] * 2
    for s in loaders:
        controller.delete_job(s.job_name)  # ttlSecondsAfterFinished elapsed
    for s, records in zip(loaders, (8640, 120000)):
        kept = QueueRequest.objects.get(pk=s.pk).logs
        assert f"wrote {records} records" in kept and "==> " in kept

    for c in connectors:
        controller.mark_succeeded(c.job_name)
    found = tick(queue)
    assert [found[c.name] for c in connectors] == [StepState.SUCCEEDED] * 2
    assert found[graph.name] == StepState.PENDING and found[trainer.name] == StepState.WAITING

    controller.mark_succeeded(graph.job_name)
    found = tick(queue)
    assert found[graph.name] == StepState.SUCCEEDED and found[trainer.name] == StepState.PENDING
    launched = controller.job(trainer.job_name)
    assert "activeDeadlineSeconds" in launched["spec"]  # batch step

    controller.mark_succeeded(trainer.job_name)
    found = tick(queue)
    assert set(found.values()) == {StepState.SUCCEEDED}
    queue.refresh_from_db()
    assert queue.status == QueueStatus.SUCCEEDED


def test_it_runs_the_realtime_pipeline_and_stops_it_without_leftovers(k8s_pipeline, realtime_queue, settings):
    controller, queue = k8s_pipeline, realtime_queue
    start(queue)
    for _ in range(6):  # each pass: whatever is launched starts running, dependents launch
        for name in cluster_jobs_of(controller, queue):
            if controller.job(name)["status"].get("active") is None:
                controller.mark_running(name)
        found = tick(queue)
        if set(found.values()) == {StepState.RUNNING}:
            break
    assert set(found.values()) == {StepState.RUNNING}, found
    assert len(cluster_jobs_of(controller, queue)) == 7
    assert all("activeDeadlineSeconds" not in controller.job(n)["spec"] for n in cluster_jobs_of(controller, queue))
    # A crash-looping pod (restart) must be removed with the rest.
    visualizer = step(queue, "visualizer", "graph_metrics_stream")
    controller.create_pod_for(visualizer.job_name, "Running", "CrashLoopBackOff")

    queue_stop(queue=queue)
    assert set(tick(queue).values()) == {StepState.STOPPING}  # the grace period runs
    settings.STOP_GRACE_SECONDS = 0
    tick(queue)  # grace over: Jobs deleted with their pods
    found = tick(queue)  # the Jobs are gone: stopped
    assert set(found.values()) == {StepState.STOPPED}, found
    assert cluster_jobs_of(controller, queue) == []
    # The Jobs go at once, their pods when the garbage collector and the kubelet are done, as on a cluster.
    wait_until(lambda: controller.pods(label_selector=f"streamforge.io/queue-id={queue.queue_id}") == [],
               message="the pods of the deleted Jobs are gone")
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPED


def test_it_marks_a_vanished_job_lost_and_fails_the_queue_without_leftovers(
    k8s_pipeline, historical_queue, settings
):
    controller, queue = k8s_pipeline, historical_queue
    connectors = [step(queue, "arango-connector", t) for t in ("api_candles_5m", "api_trades")]
    start(queue)
    for c in connectors:
        controller.mark_running(c.job_name)
    tick(queue)
    controller.store.delete("jobs", controller.namespace, connectors[0].job_name, "Background")  # someone deleted it

    found = tick(queue)

    assert found[connectors[0].name] == StepState.LOST
    lost = QueueRequest.objects.get(pk=connectors[0].pk)
    assert "not found" in lost.message
    queue.refresh_from_db()
    assert queue.status == QueueStatus.STOPPING  # the other connector is being stopped
    settings.STOP_GRACE_SECONDS = 0
    tick(queue)
    tick(queue)
    assert cluster_jobs_of(controller, queue) == []
    assert all(s in StepState.TERMINAL for s in states(queue).values())
    queue.refresh_from_db()
    assert queue.status == QueueStatus.FAILED


def test_it_converges_to_the_cluster_after_a_restart(k8s_pipeline, historical_queue):
    """The database missed every event (manager down): one pass brings it in line with the cluster."""
    controller, queue = k8s_pipeline, historical_queue
    connectors = [step(queue, "arango-connector", t) for t in ("api_candles_5m", "api_trades")]
    start(queue)
    controller.mark_running(connectors[0].job_name)
    controller.create_pod_for(connectors[1].job_name, "Failed", "OOMKilled")
    controller.mark_failed(connectors[1].job_name, with_pods=False)

    found = tick(queue)

    assert found[connectors[0].name] in (StepState.RUNNING, StepState.STOPPING)
    assert found[connectors[1].name] == StepState.FAILED
    failed = QueueRequest.objects.get(pk=connectors[1].pk)
    assert failed.message.startswith("OOMKilled")
