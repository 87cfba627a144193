"""Launch figures, against the Kubernetes emulator in its own process.

- launch_create_to_ready_jobs: `queue_create` of the 6-step historical example with the Celery chain
  run inline (create → queue_advance → step_launch), until both steps that may start at once (the two
  connectors) have their Jobs created. Baseline: POSTing the same Job and Secret bodies bare.
- launch_sustained: the Celery task body the advance sends for steps ready together, `steps_launch`
  (jobs/launching.py: the queue's claims in one statement, the Jobs and Secrets POSTed on threads, the
  records in one statement; until issue #12's batch launch it was `step_launch` per step), once per
  queue of 6 independent steps, in WORKERS forked processes at once — the deployed worker's
  concurrency (`celery worker --concurrency ${CELERY_CONCURRENCY:-2}`, prefork), each process with its
  own database connection and API client, as a prefork worker's children have. Baseline: the same
  bodies POSTed bare, one after the other, by as many processes, the two taking turns over slices of
  the queues (so a drifting load on a shared machine weighs on both alike). The one-process rates are
  printed beside it (`one_worker`), and the CPU milliseconds per Job that the worker processes and the
  emulator spent on each side (`workers_cpu_ms_per_job`, `emulator_cpu_ms_per_job`: product vs bare).

Both baselines make the launcher's two calls with its bodies: POST the Job, then POST its Secret whose
`ownerReferences` name the uid the API answered — through the launcher's own client class, each body
sent as built (k8s_client.PreparedBody), as the launcher sends its own.

`BENCH_PROFILE=1` logs the profile (top 25 by own time, top 40 by cumulative time) of the measured
`queue_create` calls (not the warm-up round) and of the first slice of the one-process product loop to the
progress log, as the reconcile figures do.
"""
from __future__ import annotations

import copy
import json
import os
import time

from benchmarks import targets
from benchmarks.harness import QueryCounter, BARE_NAMESPACE, NAMESPACE, Samples, celery_eager, emit, log, process_cpu

INDEPENDENT = [f"api_candles_{i}" for i in ("1m", "5m", "15m", "1h", "4h")] + ["api_trades"]
WORKERS = int(os.environ.get("CELERY_CONCURRENCY") or 2)
SLICES = 6  # product and bare alternate over this many slices of the steps
_PROFILING = os.environ.get("BENCH_PROFILE") == "1"
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def _bare_objects(objects) -> list[tuple[dict, dict]]:
    """The (Job, Secret) pairs moved to the bare namespace, made before the clock starts: copying a
    manifest costs several times building one, and a create loop POSTs bodies it has."""
    copies = []
    for job, secret in objects:
        job, secret = copy.deepcopy(job), copy.deepcopy(secret)
        job["metadata"]["namespace"] = secret["metadata"]["namespace"] = BARE_NAMESPACE
        copies.append((job, secret))
    return copies


def _bare_create(api_client, objects) -> None:
    """For each (Job, Secret) pair of `_bare_objects`: POST the Job, then its Secret owned by the uid the
    API answered — the launcher's two calls, nothing else."""
    for job, secret in objects:
        answer = api_client.call_api(f"/apis/batch/v1/namespaces/{BARE_NAMESPACE}/jobs", "POST",
                                     body=targets.prepared_body(job), header_params=dict(_HEADERS),
                                     auth_settings=["BearerToken"], _preload_content=False)
        secret["metadata"]["ownerReferences"][0]["uid"] = json.loads(answer[0].data)["metadata"]["uid"]
        api_client.call_api(f"/api/v1/namespaces/{BARE_NAMESPACE}/secrets", "POST", body=targets.prepared_body(secret),
                            header_params=dict(_HEADERS), auth_settings=["BearerToken"],
                            _preload_content=False)[0].data  # read: the connection goes back to the pool


def run(ctx) -> None:
    from django.conf import settings

    settings.K8S_DELETE_ORPHANS = False
    targets.reset_launcher_cache()
    ctx.kube.reset()
    api_client = targets.launcher_api_client(ctx.kube.api_client())
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
    profiler = _Profiler(_PROFILING)
    with celery_eager(True):
        for i in range(rounds + 1):
            queue_id = f"bench-launch-{i}-{ctx.run_id}"
            with QueryCounter() as captured:
                t0 = time.perf_counter()
                # The warm-up round (first connections, lazy imports) stays out of the profile.
                create = profiler.runcall if i else _plain
                queue, _ = create(targets.queue_create, payload=payload, queue_id=queue_id, source="api")
                elapsed = (time.perf_counter() - t0) * 1000
            launched = list(m.QueueRequest.objects.filter(queue=queue).exclude(launched_at=None).select_related("queue"))
            objects = _bare_objects(targets.job_objects(step) for step in launched)
            t0 = time.perf_counter()
            _bare_create(api_client, objects)
            bare_ms = (time.perf_counter() - t0) * 1000
            if i == 0:
                continue  # warm-up: first connections, caches
            measured.append(elapsed)
            bare.append(bare_ms)
            queries.append(len(captured))
            jobs_seen.append(len(launched))
    profiler.report("launch_create_to_ready_jobs (queue_create)")
    measured, bare = Samples(measured), Samples(bare)
    emit("launch_create_to_ready_jobs", value=measured.p50, unit="ms", baseline="same Job+Secret POSTs bare",
         baseline_value=bare.p50, scale=ctx.scale_label, target="p50 <= 20 ms", meets=measured.p50 <= 20,
         p50_ms=measured.p50, p95_ms=measured.p95, queries=max(queries), ready_jobs_created=min(jobs_seen),
         samples=len(measured.ms))


def _plain(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class _Profiler:
    """cProfile.Profile when profiling, else a plain call (the profiler's own cost stays out of figures)."""

    def __init__(self, on: bool):
        import cProfile

        self.profile = cProfile.Profile() if on else None

    def runcall(self, fn, *args, **kwargs):
        return self.profile.runcall(fn, *args, **kwargs) if self.profile else fn(*args, **kwargs)

    def report(self, figure: str) -> None:
        if self.profile:
            import io
            import pstats

            out = io.StringIO()
            stats = pstats.Stats(self.profile, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            # The project's own functions (the lists above are mostly the libraries' insides).
            stats.sort_stats("cumulative").print_stats(r"(^|/)(jobs|queues|mirror|ops)/[a-z_/]+\.py", 40)
            log(f"{figure} profile:\n{out.getvalue()}")


def _sustained(ctx, api_client) -> None:
    m = targets.models()
    scheduler = targets.scheduler()
    queues = 21 if ctx.quick else 84  # 6 steps each: 504 launches at full scale
    payload = {"symbol": "BTCUSDT", "time_range": "2024-06-01:2024-06-30",
               "requests": [{"target": "loader-producer", "type": t} for t in INDEPENDENT]}
    rounds = {}
    with celery_eager(False):  # steps become `launching`; their launch tasks go to a broker no one reads
        for workers in (1, WORKERS):
            for i in range(queues):
                queue, _ = targets.queue_create(payload=payload, queue_id=f"bench-sustained-{workers}-{i}-{ctx.run_id}",
                                                source="api")
                scheduler.queue_advance(queue.pk)
            steps = list(m.QueueRequest.objects.filter(queue__queue_id__startswith=f"bench-sustained-{workers}-",
                                                       state="launching").select_related("queue").order_by("pk"))
            groups: dict[int, list] = {}  # what each queue's advance hands to one steps_launch task
            for step in steps:
                groups.setdefault(step.queue_id, []).append(step)
            groups = list(groups.values())
            profile = _PROFILING and workers == 1
            # Product and bare take turns, slice by slice: the load of a shared machine drifts within a
            # run, and a ratio of two rounds measured minutes apart reads that drift, not the product.
            launched, queries, elapsed, bare_elapsed = 0, 0, 0.0, 0.0
            cpu = {"product": [0.0, 0.0], "bare": [0.0, 0.0]}  # [workers' CPU s, emulator's CPU s]
            for part in range(SLICES):
                share = groups[part::SLICES]
                emulator = process_cpu(ctx.kube.process.pid)
                out, count, seconds, spent = _in_workers(workers, _launch_all, [[s.pk for s in g] for g in share],
                                                         profile and part == 0, _launcher_ready)
                _add_cpu(cpu["product"], spent, emulator, process_cpu(ctx.kube.process.pid))
                launched, queries, elapsed = launched + out.count("launched"), queries + count, elapsed + seconds
                objects = _bare_objects(targets.job_objects(step) for group in share for step in group)
                emulator = process_cpu(ctx.kube.process.pid)
                elapsed_bare, spent = _in_workers(workers, _bare_all, objects, False,
                                                  lambda: targets.launcher_api_client(ctx.kube.api_client()))[2:]
                _add_cpu(cpu["bare"], spent, emulator, process_cpu(ctx.kube.process.pid))
                bare_elapsed += elapsed_bare
            rounds[workers] = (launched / elapsed, len(steps) / bare_elapsed, len(steps), queries,
                               {side: [round(1000 * c / len(steps), 3) for c in pair] for side, pair in cpu.items()})
    rate, bare_rate, launches, queries, cpu = rounds[WORKERS]
    one_rate, one_bare = rounds[1][:2]
    emit("launch_sustained", value=rate, unit="Jobs/s", baseline="bare create loop (same Job+Secret bodies)",
         baseline_value=bare_rate, scale=f"{launches} steps, {WORKERS} worker processes",
         target=">= 200 Jobs/s and >= 0.7x baseline", meets=rate >= 200 and rate >= 0.7 * bare_rate,
         launched=launches, workers=WORKERS, queries_per_launch=round(queries / max(launches, 1), 2),
         one_worker=f"{one_rate:.1f} vs {one_bare:.1f} Jobs/s ({one_rate / one_bare:.2f}x)",
         # Where a launch's time goes beside the bare loop's: CPU ms per Job of the worker processes
         # (claims, records, manifests, threads, HTTP) and of the emulator serving them.
         workers_cpu_ms_per_job=f"{cpu['product'][0]} vs {cpu['bare'][0]}",
         emulator_cpu_ms_per_job=f"{cpu['product'][1]} vs {cpu['bare'][1]}",
         jobs_in_cluster=ctx.kube.count("jobs", NAMESPACE))


def _add_cpu(total: list[float], workers: float, emulator_before: float | None, emulator_after: float | None):
    total[0] += workers
    if emulator_before is not None and emulator_after is not None:
        total[1] += emulator_after - emulator_before


def _launcher_ready():
    from jobs.launchers import get_launcher

    return get_launcher()  # built once per process, as in a worker: not part of a launch


def _launch_all(groups, counter, _launcher) -> list[str]:
    from jobs import launching

    with counter:
        return [outcome for pks in groups for outcome in launching.steps_launch(pks).values()]


def _bare_all(objects, counter, client) -> list[str]:
    try:
        _bare_create(client, objects)
    finally:
        client.close()
    return ["created"] * len(objects)


def _in_workers(workers: int, fn, items: list, profile: bool, prepare):
    """Run fn(share, QueryCounter, prepare()) in `workers` forked processes at once, each on every
    workers-th item; returns (all results, queries, seconds from the first start to the last end, the
    processes' CPU seconds meanwhile). Each
    process opens its own database connection and API client after the fork, before the clock starts
    (a prefork worker's children do too, once)."""
    import multiprocessing

    from django import db

    db.connections.close_all()
    targets.reset_launcher_cache()
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(workers), context.Queue()

    def child(share):
        from django.db import connection

        connection.ensure_connection()
        prepared = prepare()
        counter = QueryCounter()
        barrier.wait()
        t0, cpu0 = time.perf_counter(), time.process_time()
        profiler = _Profiler(profile)
        out = profiler.runcall(fn, share, counter, prepared)
        profiler.report("launch_sustained (steps_launch, one process)")
        t1, cpu1 = time.perf_counter(), time.process_time()  # the profiler's cost counts when profiling
        results.put((out, counter.count, t0, t1, cpu1 - cpu0))
        connection.close()

    processes = [context.Process(target=child, args=(items[i::workers],)) for i in range(workers)]
    for process in processes:
        process.start()
    answers = [results.get() for _ in processes]
    for process in processes:
        process.join()
    out = [r for answer in answers for r in answer[0]]
    return (out, sum(a[1] for a in answers), max(a[3] for a in answers) - min(a[2] for a in answers),
            sum(a[4] for a in answers))
