"""Reconcile and stop figures, against the Kubernetes emulator in its own process.

- reconcile_pass_<N>: one `reconcile()` pass (the beat task's body) with N running Jobs whose steps are
  running in the database: the steady state, where nothing changed (the figure reports `changed`),
  beside a healthy workload watcher (`manage.py watch_workloads` in its own process, caught up:
  figures_watch), which observes the cluster instead of the pass; the figure also reports the
  watcher's periodic sweep (`watcher_sweep_s`, `watcher_swept`: it must cover every step).
  Baseline: listing the same Jobs and pods through the same client (what a listing pass must read).
  The history's active queues supply the first Jobs; copies of them (`bench-c…`) the rest.
- reconcile_relist_<N> (largest N only): the same pass without a watcher — it lists the cluster and
  observes every step (the fallback when no watcher is healthy; what reconcile_pass measured before).
- reconcile_watch_latency: a Job's change in the emulator → its step's transition in PostgreSQL,
  through the watcher (figures_watch).
- stop_latency_50_steps: `queue_stop` of queues holding 50 running steps whose workers ignore the
  stop command (the worst case), until the last of their Jobs and pods is gone. Target: the grace
  period + 2 s. As in production: the request only records the stop and announces the tasks on the
  bench's Redis; a Celery worker process runs them (per queue `queue_send_stop`, then
  `queue_force_stop` at its ETA, the end of the grace period: one delete-collection of the queue's
  stopping steps' Jobs), and reconcile runs on its beat interval in a thread. Eager Celery would
  ignore the ETA (the forced stop then waits for a reconcile pass) and would run the tasks inside
  the request. The clock stops when the API lists none of the Jobs and pods (a terminating pod still
  counts, as `kubectl get pods` shows it); `first_job_gone_s`/`jobs_gone_s` say when the forced stops
  acted, BENCH_PROFILE=1 profiles the requests.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

from benchmarks import dataset, figures_watch, targets
from benchmarks.harness import NAMESPACE, QueryCounter, Samples, celery_eager, emit, log, product_process


def _seed_cluster(ctx) -> int:
    """A running Job (and pod) in the emulator for every launched step in the database."""
    m = targets.models()
    ctx.kube.reset()
    steps = m.QueueRequest.objects.filter(state__in=["pending", "running", "stopping"]).select_related("queue")
    manifests = [targets.job_manifest(step) for step in steps.iterator(chunk_size=2000)]
    ctx.kube.seed_running(manifests)
    return len(manifests)


def run(ctx) -> None:
    from django.conf import settings

    settings.K8S_DELETE_ORPHANS = False
    targets.reset_launcher_cache()
    sizes = [ctx.running_jobs, 2_000 if ctx.quick else 10_000]
    if ctx.quick and any("10000" in part for part in ctx.only):
        sizes.append(10_000)  # `--quick --only reconcile_pass_10000`: the full-scale size on the small history
    try:
        for size in dict.fromkeys(sizes):
            largest = size == max(sizes)  # the relist and latency figures run at the largest size only
            wanted = {"watched": ctx.wants(f"reconcile_pass_{size}"),
                      "relist": largest and ctx.wants(f"reconcile_relist_{size}"),
                      "latency": largest and ctx.wants("reconcile_watch_latency")}
            if any(wanted.values()):
                _reconcile(ctx, size, **wanted)
        if ctx.wants("stop_latency_50_steps"):
            dataset.remove_bench_queues()
            _stop(ctx)
    finally:
        dataset.remove_bench_queues()
        ctx.kube.reset()


def _passes(scheduler, figure: str):
    """A warm pass, then 3 measured ones (1 when a pass takes over 20 s): (ms, summaries, queries, warm)."""
    with celery_eager(True):
        t0 = time.perf_counter()
        warm = scheduler.reconcile()
        passes = 3 if time.perf_counter() - t0 < 20 else 1
        measured, summaries, queries = [], [], 0
        for _ in range(passes):
            with QueryCounter() as captured, _profiled(figure):
                t0 = time.perf_counter()
                summaries.append(scheduler.reconcile())
                measured.append((time.perf_counter() - t0) * 1000)
            queries = max(queries, len(captured))
    return Samples(measured), summaries, queries, warm


def _reconcile(ctx, size: int, *, watched: bool, relist: bool, latency: bool) -> None:
    m = targets.models()
    scheduler = targets.scheduler()
    dataset.remove_bench_queues()
    running = m.QueueRequest.objects.filter(state="running").count()
    if running and (running < size or latency):  # latency marks copies' Jobs, never the reusable history's
        dataset.clone_active(max(1, -(-(size - running) // running)))
    seeded = _seed_cluster(ctx)
    log(f"reconcile: {seeded} running Jobs seeded")
    launcher = targets.kubernetes_launcher(ctx.kube.api_client(), NAMESPACE)
    bare = []
    for _ in range(3):
        t0 = time.perf_counter()
        jobs, pods = launcher.list_labelled("jobs"), launcher.list_labelled("pods")
        bare.append((time.perf_counter() - t0) * 1000)
    launcher.api_client.close()
    bare = Samples(bare)
    common = dict(unit="s", baseline="bare list of Jobs + pods", baseline_value=bare.p50 / 1000,
                  scale=f"{seeded} running Jobs, {len(jobs)} listed", target="<= 1 s and <= 1.5x baseline",
                  pods_listed=len(pods))
    if relist:  # no watcher: the pass lists the cluster (the fallback, and what a pass cost before the watcher)
        measured, summaries, queries, warm = _passes(scheduler, f"reconcile_relist_{size}")
        observed = min(s.get("observed", 0) for s in summaries)
        emit(f"reconcile_relist_{size}", value=measured.p50 / 1000, **common,
             # A pass that could not list the cluster returns early: that is no figure.
             meets=observed >= seeded and measured.p50 <= 1000 and measured.p50 <= 1.5 * bare.p50,
             queries=queries, observed=observed, changed=max(s.get("changed", 0) for s in summaries),
             warm_pass_changed=warm.get("changed"), passes=len(measured.ms))
    if watched or latency:
        with figures_watch.watcher_process():
            if watched:  # the beat's pass beside a healthy watcher that watches every Job
                measured, summaries, queries, warm = _passes(scheduler, f"reconcile_pass_{size}")
                beat = figures_watch.heartbeat() or {}
                stats = beat.get("stats") or {}
                healthy = all("watcher" in s for s in summaries)
                emit(f"reconcile_pass_{size}", value=measured.p50 / 1000, **common,
                     meets=healthy and stats.get("swept", 0) >= seeded and measured.p50 <= 1000
                     and measured.p50 <= 1.5 * bare.p50,
                     queries=queries, watcher_healthy=healthy, changed=max(s.get("changed", 0) for s in summaries),
                     warm_pass_changed=warm.get("changed"), passes=len(measured.ms),
                     watcher_swept=stats.get("swept"), watcher_sweep_s=stats.get("sweep_s"),
                     watcher_lists=stats.get("lists"), watcher_events=stats.get("events"))
            if latency:
                figures_watch.watch_latency(ctx, seeded)
    dataset.remove_bench_queues()


def _stop(ctx) -> None:
    from django.conf import settings

    m = targets.models()
    scheduler = targets.scheduler()
    grace = 3.0
    settings.STOP_GRACE_SECONDS = grace
    interval = settings.RECONCILE_INTERVAL_SECONDS
    payload = {"symbol": "BTCUSDT", "time_range": "2024-06-01:2024-06-30",
               "requests": [{"target": "loader-producer", "type": t} for t in
                            [f"api_candles_{i}" for i in ("1m", "5m", "15m", "1h")] + ["api_trades"]]}
    queues = []
    with celery_eager(False):  # created as waiting; they are made running below, as if launched long ago
        for i in range(10):  # 10 queues x 5 independent steps = 50 steps
            queue, _ = targets.queue_create(payload=payload, queue_id=f"bench-stop-{i}-{ctx.run_id}", source="api")
            queues.append(queue)
    from django.utils import timezone

    now = timezone.now()
    steps = m.QueueRequest.objects.filter(queue__in=queues)
    steps.update(state="running", launched_at=now, started_at=now, state_changed_at=now)
    m.Queue.objects.filter(pk__in=[q.pk for q in queues]).update(status="running", started_at=now)
    stopped_steps = steps.count()
    _seed_cluster(ctx)  # the history's running Jobs too: reconcile must leave them alone meanwhile
    stopping = queues
    selector = f"streamforge.io/queue-id in ({','.join(q.queue_id for q in queues)})"
    done = threading.Event()
    worker = _celery_worker(STOP_GRACE_SECONDS=f"{grace:g}", RECONCILE_INTERVAL_SECONDS=f"{interval:g}")

    def beat():  # the Celery beat schedule: a reconcile pass every RECONCILE_INTERVAL_SECONDS
        from django.db import connection

        while not done.wait(interval):
            scheduler.reconcile()
        connection.close()

    thread = threading.Thread(target=beat, daemon=True)
    with worker, celery_eager(False), QueryCounter() as captured:
        t0 = time.monotonic()
        thread.start()
        with _profiled("stop_latency_50_steps (the requests)"):
            for queue in stopping:
                targets.queue_stop(queue=queue, reason="bench stop")
        request_ms = (time.monotonic() - t0) * 1000
        request_queries = len(captured)
        remaining, marks = None, {}  # marks: when the first and the last Job went, when the last pod went
        deadline = t0 + grace + 10 * interval + 60
        while time.monotonic() < deadline:
            jobs, pods = (ctx.kube.count(plural, NAMESPACE, selector) for plural in ("jobs", "pods"))
            at = round(time.monotonic() - t0, 2)
            if jobs < stopped_steps:
                marks.setdefault("first_job_gone_s", at)
            if jobs == 0:
                marks.setdefault("jobs_gone_s", at)
            remaining = jobs + pods
            if remaining == 0:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        done.set()
        thread.join(timeout=600)
    emit("stop_latency_50_steps", value=elapsed if remaining == 0 else None, unit="s",
         baseline="stop grace period", baseline_value=grace, scale=f"{stopped_steps} running steps, workers ignore stop",
         target=f"<= grace + 2 s ({grace + 2:g} s)", meets=remaining == 0 and elapsed <= grace + 2,
         request_ms=request_ms, request_queries=request_queries, reconcile_interval_s=interval,
         workloads_left=remaining, tasks_run_by="celery worker process", **marks)


@contextlib.contextmanager
def _profiled(figure: str):
    """With BENCH_PROFILE=1, the measured code's profile (top 25 by own time) goes to the progress log."""
    if os.environ.get("BENCH_PROFILE") != "1":
        yield
        return
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
        log(f"{figure} profile:\n{out.getvalue()}")


@contextlib.contextmanager
def _celery_worker(**env):
    """A Celery worker process on the bench's broker, as production runs (concurrency 2, as `make run`).

    Tasks left in the broker by the figures before (their queues are gone) are purged first, so the
    worker starts on the stop's own tasks."""
    app = targets.celery_app()
    app.control.purge()
    with product_process([sys.executable, "-m", "celery", "-A", "queuemanager", "worker", "-l", "warning",
                          "--concurrency", "2", "--without-gossip", "--without-mingle"],
                         ready=lambda: app.control.ping(timeout=1.0), what="the Celery worker", timeout=120,
                         CELERY_TASK_ALWAYS_EAGER="0", **env) as process:
        yield process
