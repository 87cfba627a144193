"""Mirror lag figure: from a committed change to its document written in ArangoDB (emulator, own process).

A writer changes running steps of the history at 1,000 changes/s (ticks of 20 changes, each one
transaction that updates the rows and records them in the outbox, as bulk paths do). The drain
(`mirror_drain`, the Celery task's body) runs in a process of its own in a loop, like a dedicated
worker; the writer starts once that process has drained once (Django set up, schema checked). A change counts as mirrored when its outbox row is gone (deleted only after the document
write returned) or was re-created by a later change; a watcher polls the outbox every 10 ms.
Baseline: writing the same number of documents per tick straight to the emulator.

    python -m benchmarks.mirror_lag --drain     (the drain process; settings from the environment)
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time

from benchmarks import targets
from benchmarks.harness import ARANGO_ROOT_PASSWORD, ROOT, Samples, celery_eager, emit, log

RATE = 1_000
TICK = 0.02


def run(ctx) -> None:
    if not ctx.wants("mirror_lag_p99"):
        return
    from django.conf import settings

    arango_env = {"ARANGO_URL": ctx.arango.url, "ARANGO_DB": f"bench_mirror_{ctx.run_id}", "ARANGO_USER": "root",
                  "ARANGO_PASSWORD": ARANGO_ROOT_PASSWORD}
    previous = {k: getattr(settings, k) for k in (*arango_env, "ARANGO_ENABLED")}
    for key, value in arango_env.items():
        setattr(settings, key, value)
    settings.ARANGO_ENABLED = True
    drainer = subprocess.Popen([sys.executable, "-m", "benchmarks.mirror_lag", "--drain"], cwd=ROOT,
                               env={**os.environ, **arango_env}, stdout=subprocess.PIPE, text=True)
    try:
        _wait_until_ready(drainer)
        with celery_eager(False):  # the drain task the outbox enqueues goes to the broker; the process above drains
            _measure(ctx, seconds=5 if ctx.quick else 15)
    finally:
        drainer.terminate()
        drainer.wait(30)
        for key, value in previous.items():
            setattr(settings, key, value)
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {targets.mirror_outbox_table()}")


def _wait_until_ready(drainer, timeout: float = 180) -> None:
    """A dedicated worker is up before the traffic: its start (Django, the schema check) is not lag."""
    ready, _, _ = select.select([drainer.stdout], [], [], timeout)
    line = drainer.stdout.readline() if ready else ""
    if line.strip() != "ready":
        raise RuntimeError(f"the drain process did not get ready within {timeout:g} s")


def _measure(ctx, *, seconds: float) -> None:
    import psycopg
    from django.db import connection, transaction
    from django.db.models import F

    m = targets.models()
    table = targets.mirror_outbox_table()
    pool = list(m.QueueRequest.objects.filter(state="running").values_list("pk", flat=True)[:2000])
    per_tick = int(RATE * TICK)
    outstanding: dict[int, list[float]] = {}
    lock = threading.Lock()
    lags: list[float] = []
    writing = threading.Event()
    writing.set()

    def watch():
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
            while writing.is_set() or outstanding:
                with lock:
                    ids = list(outstanding)
                if ids:
                    rows = conn.execute(f"SELECT object_id, extract(epoch FROM created_at) FROM {table} "
                                        "WHERE kind = 'step' AND object_id = ANY(%s)", [ids]).fetchall()
                    now = time.time()
                    pending = {pk: float(created) for pk, created in rows}
                    with lock:
                        for pk in ids:
                            times = outstanding.get(pk, [])
                            done = [t for t in times if pk not in pending or pending[pk] > t]
                            lags.extend(now - t for t in done)
                            left = [t for t in times if t not in done]
                            if left:
                                outstanding[pk] = left
                            else:
                                outstanding.pop(pk, None)
                time.sleep(0.01)
                if not writing.is_set() and time.time() - stop_at > 120:
                    break

    stop_at = float("inf")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    changes, started, cursor_ = 0, time.monotonic(), 0
    next_tick = started
    while time.monotonic() - started < seconds:
        # The changes due by now, in one transaction: a slow tick is caught up by the next, so the
        # offered rate stays RATE on average (distinct rows: at most the pool per transaction).
        due = min(len(pool), max(per_tick, int(RATE * (time.monotonic() - started)) - changes))
        ids = [pool[(cursor_ + i) % len(pool)] for i in range(due)]
        cursor_ += due
        with transaction.atomic():
            m.QueueRequest.objects.filter(pk__in=ids).update(records_written=F("records_written") + 1)
            targets.mirror_record_many("step", ids)
        committed = time.time()
        with lock:
            for pk in ids:
                outstanding.setdefault(pk, []).append(committed)
        changes += len(ids)
        next_tick += TICK
        time.sleep(max(0.0, next_tick - time.monotonic()))
    achieved = changes / (time.monotonic() - started)
    stop_at = time.time()
    writing.clear()
    watcher.join(timeout=180)
    unsynced = sum(len(v) for v in outstanding.values())
    lag = Samples([x * 1000 for x in lags]) if lags else None
    base = _baseline(ctx, per_tick)
    log(f"mirror: {changes} changes at {achieved:.0f}/s, {len(lags)} mirrored, {unsynced} not mirrored")
    emit("mirror_lag_p99", value=lag.p99 / 1000 if lag else None, unit="s",
         baseline=f"bare write of {per_tick} docs to the emulator (p99)", baseline_value=base.p99 / 1000,
         scale=f"{achieved:.0f} changes/s for {seconds:g} s", target="p99 <= 1 s at 1000 changes/s",
         meets=bool(lag) and unsynced == 0 and lag.p99 <= 1000 and achieved >= 0.9 * RATE,
         p50_s=lag.p50 / 1000 if lag else None, changes=changes, not_mirrored=unsynced)


def _baseline(ctx, per_tick: int) -> Samples:
    from arango import ArangoClient

    client = ArangoClient(hosts=ctx.arango.url)
    system = client.db("_system", username="root", password=ARANGO_ROOT_PASSWORD)
    name = f"bench_bare_{ctx.run_id}"
    if not system.has_database(name):
        system.create_database(name)
    db = client.db(name, username="root", password=ARANGO_ROOT_PASSWORD)
    collection = db.collection("steps") if db.has_collection("steps") else db.create_collection("steps")
    ms = []
    for n in range(100):
        docs = [{"_key": f"s{(n * per_tick + i) % 2000}", "records_written": n, "state": "running"} for i in range(per_tick)]
        t0 = time.perf_counter()
        collection.insert_many(docs, overwrite=True, silent=True)
        ms.append((time.perf_counter() - t0) * 1000)
    system.delete_database(name)
    client.close()
    return Samples(ms)


def _drain_forever() -> None:
    import signal

    import django

    django.setup()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    profile_to = os.environ.get("MIRROR_LAG_PROFILE")  # a path: cProfile the drain process into it
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        _drain_until(stop)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_to)


def _drain_until(stop) -> None:
    ready = False
    while not stop.is_set():
        try:
            result = targets.mirror_drain()
        except Exception as exc:  # the emulator may still be creating the schema; keep going
            log(f"mirror drain: {type(exc).__name__}: {exc}")
            targets.mirror_forget_schema()
            stop.wait(0.2)
            continue
        if not ready:  # schema checked, connections open: tell the bench to start writing
            print("ready", flush=True)
            ready = True
        if not result.synced:
            stop.wait(0.005)


if __name__ == "__main__":
    if sys.argv[1:] == ["--drain"]:
        _drain_forever()
