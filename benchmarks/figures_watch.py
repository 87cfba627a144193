"""The workload watcher in the reconcile figures (issue #12): its process, and the latency figure.

- `watcher_process()`: `manage.py watch_workloads` in a process of its own (as deployed: one replica
  beside the beat), against the emulator's process, until its heartbeat says it listed everything and
  swept once — caught up. Its Celery announcements go to the bench's broker (no worker runs them here).
- reconcile_watch_latency: with N running Jobs watched, `changes` Jobs (of bench copies, never the
  reusable history) are marked succeeded in the emulator one after another; each is timed from the
  mark to its step's `succeeded` row in PostgreSQL (what the UI and the queue's advance read).
  Baseline: the same change's arrival on a bare watch stream opened by the bench (the emulator's own
  delivery, no product code), from the same marks.
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import time

from benchmarks import targets
from benchmarks.harness import NAMESPACE, Samples, emit, log, product_process


def heartbeat() -> dict | None:
    from jobs import k8s_heartbeat

    return k8s_heartbeat.healthy_watcher()


@contextlib.contextmanager
def watcher_process(timeout: float = 900.0):
    from jobs import k8s_heartbeat

    k8s_heartbeat.clear()
    started = time.monotonic()
    try:
        with product_process([sys.executable, "manage.py", "watch_workloads"], ready=lambda: heartbeat() is not None,
                             what="the workload watcher (caught up)", timeout=timeout,
                             CELERY_TASK_ALWAYS_EAGER="0") as process:
            log(f"watcher caught up in {time.monotonic() - started:.1f} s: {heartbeat()}")
            yield process
    finally:
        k8s_heartbeat.clear()


def watch_latency(ctx, seeded: int, changes: int = 100) -> None:
    """Run inside `watcher_process()`, with `seeded` running Jobs in the emulator."""
    from kubernetes.watch.watch import iter_resp_lines

    m = targets.models()
    rows = list(m.QueueRequest.objects.filter(state="running", queue__queue_id__startswith="bench-c")
                .order_by("pk").values_list("pk", "job_name")[:changes])
    if len(rows) < changes:
        log(f"reconcile_watch_latency: only {len(rows)} bench copies running; no figure")
        return
    api = ctx.kube.api_client()
    import kubernetes

    batch = kubernetes.client.BatchV1Api(api)
    rv = batch.list_namespaced_job(NAMESPACE, limit=1, _preload_content=False)
    rv = json.loads(rv.data)["metadata"]["resourceVersion"]
    seen: dict[str, float] = {}
    names = {job_name for _, job_name in rows}
    stream = batch.list_namespaced_job(NAMESPACE, watch=True, resource_version=rv, timeout_seconds=600,
                                       _preload_content=False)

    def bare_watch():  # the baseline: when the emulator delivers each change on a watch
        # It ends itself once every change arrived: closing a stream from another thread blocks on
        # the read in progress until the server sends something.
        try:
            for line in iter_resp_lines(stream):
                event = json.loads(line)
                name = event["object"]["metadata"]["name"]
                if event["type"] == "MODIFIED" and name not in seen:
                    seen[name] = time.perf_counter()
                if names <= seen.keys():
                    break
        finally:
            stream.close()  # in this thread: half-read, the connection must not go back to the pool

    reader = threading.Thread(target=bare_watch, daemon=True)
    reader.start()
    applied, marked, lost = [], {}, 0
    for pk, job_name in rows:
        t0 = marked[job_name] = time.perf_counter()
        ctx.kube.control("mark", {"namespace": NAMESPACE, "name": job_name, "phase": "succeeded"})
        deadline = t0 + 30
        while not m.QueueRequest.objects.filter(pk=pk, state="succeeded").exists():
            if time.perf_counter() > deadline:
                lost += 1
                break
            time.sleep(0.002)
        else:
            applied.append((time.perf_counter() - t0) * 1000)
    reader.join(timeout=30)
    if not reader.is_alive():
        api.close()
    delivered = [(seen[name] - t0) * 1000 for name, t0 in marked.items() if name in seen]
    beat = heartbeat() or {}
    applied_s, delivered_s = Samples(applied), Samples(delivered)
    emit("reconcile_watch_latency", value=applied_s.p50 if applied else None, unit="ms",
         baseline="bare watch delivery of the same change", baseline_value=delivered_s.p50 if delivered else None,
         scale=f"{changes} Job changes one at a time, {seeded} running Jobs watched",
         target="no change lost; p99 <= 1 s", meets=lost == 0 and bool(applied) and applied_s.p99 <= 1000,
         p99_ms=applied_s.p99 if applied else None, baseline_p99_ms=delivered_s.p99 if delivered else None,
         lost=lost, watcher_stats=beat.get("stats"))
