"""Launch figures, against the Kubernetes emulator in its own process.

- launch_create_to_ready_jobs: `queue_create` of the 6-step historical example with the Celery chain
  run inline (create → queue_advance → step_launch), until both steps that may start at once (the two
  connectors) have their Jobs created. Baseline: POSTing the same Secret and Job bodies bare.
- launch_sustained: the Celery task body `step_launch` in a loop over steps ready to launch (6
  independent steps per queue), one worker. Baseline: the same bodies POSTed bare in a loop.
"""
from __future__ import annotations

import time

from benchmarks import targets
from benchmarks.harness import QueryCounter, BARE_NAMESPACE, NAMESPACE, Samples, celery_eager, emit

INDEPENDENT = [f"api_candles_{i}" for i in ("1m", "5m", "15m", "1h", "4h")] + ["api_trades"]


def _bare_create(api_client, objects) -> None:
    """POST each (plural, body) into the bare namespace, as the launcher's calls would, nothing else."""
    import copy

    for plural, body in objects:
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = BARE_NAMESPACE
        path = f"/api/v1/namespaces/{BARE_NAMESPACE}/secrets" if plural == "secrets" \
            else f"/apis/batch/v1/namespaces/{BARE_NAMESPACE}/jobs"
        api_client.call_api(path, "POST", body=body, header_params={"Content-Type": "application/json",
                                                                   "Accept": "application/json"},
                            auth_settings=["BearerToken"], _preload_content=False)


def run(ctx) -> None:
    from django.conf import settings

    settings.K8S_DELETE_ORPHANS = False
    targets.reset_launcher_cache()
    ctx.kube.reset()
    api_client = ctx.kube.api_client()
    try:
        if ctx.wants("launch_create_to_ready_jobs"):
            _create_to_ready(ctx, api_client)
        if ctx.wants("launch_sustained"):
            _sustained(ctx, api_client)
    finally:
        api_client.close()
        ctx.kube.reset()
        from benchmarks.dataset import remove_bench_queues

        remove_bench_queues()


def _create_to_ready(ctx, api_client) -> None:
    m = targets.models()
    payload = targets.template_payload("historical-pipeline")
    measured, bare, queries, jobs_seen = [], [], [], []
    rounds = 10 if ctx.quick else 30
    with celery_eager(True):
        for i in range(rounds + 1):
            queue_id = f"bench-launch-{i}-{ctx.run_id}"
            with QueryCounter() as captured:
                t0 = time.perf_counter()
                queue, _ = targets.queue_create(payload=payload, queue_id=queue_id, source="api")
                elapsed = (time.perf_counter() - t0) * 1000
            launched = list(m.QueueRequest.objects.filter(queue=queue).exclude(launched_at=None).select_related("queue"))
            objects = [obj for step in launched for obj in targets.job_objects(step)]
            t0 = time.perf_counter()
            _bare_create(api_client, objects)
            bare_ms = (time.perf_counter() - t0) * 1000
            if i == 0:
                continue  # warm-up: first connections, caches
            measured.append(elapsed)
            bare.append(bare_ms)
            queries.append(len(captured))
            jobs_seen.append(len(launched))
    measured, bare = Samples(measured), Samples(bare)
    emit("launch_create_to_ready_jobs", value=measured.p50, unit="ms", baseline="same Secret+Job POSTs bare",
         baseline_value=bare.p50, scale=ctx.scale_label, target="p50 <= 20 ms", meets=measured.p50 <= 20,
         p50_ms=measured.p50, p95_ms=measured.p95, queries=max(queries), ready_jobs_created=min(jobs_seen),
         samples=len(measured.ms))


def _sustained(ctx, api_client) -> None:
    m = targets.models()
    scheduler = targets.scheduler()
    queues = 21 if ctx.quick else 84  # 6 steps each: 504 launches at full scale
    payload = {"symbol": "BTCUSDT", "time_range": "2024-06-01:2024-06-30",
               "requests": [{"target": "loader-producer", "type": t} for t in INDEPENDENT]}
    with celery_eager(False):  # steps become `launching`; their launch tasks go to a broker no one reads
        for i in range(queues):
            queue, _ = targets.queue_create(payload=payload, queue_id=f"bench-sustained-{i}-{ctx.run_id}", source="api")
            scheduler.queue_advance(queue.pk)
        steps = list(m.QueueRequest.objects.filter(queue__queue_id__startswith=f"bench-sustained-",
                                                   state="launching").select_related("queue").order_by("pk"))
        objects = [targets.job_objects(step) for step in steps]
        with QueryCounter() as captured:
            t0 = time.perf_counter()
            results = [scheduler.step_launch(step.pk) for step in steps]
            elapsed = time.perf_counter() - t0
    launched = results.count("launched")
    t0 = time.perf_counter()
    for objs in objects:
        _bare_create(api_client, objs)
    bare_elapsed = time.perf_counter() - t0
    rate, bare_rate = launched / elapsed, len(objects) / bare_elapsed
    emit("launch_sustained", value=rate, unit="Jobs/s", baseline="bare create loop (same Secret+Job bodies)",
         baseline_value=bare_rate, scale=f"{len(steps)} steps", target=">= 200 Jobs/s and >= 0.7x baseline",
         meets=rate >= 200 and rate >= 0.7 * bare_rate, launched=launched,
         queries_per_launch=round(len(captured) / max(len(steps), 1), 2),
         jobs_in_cluster=ctx.kube.count("jobs", NAMESPACE))
