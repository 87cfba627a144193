"""What every figure shares: the servers, the emulators in processes of their own, timing, and output.

PostgreSQL keeps its data in `.data/bench/` between runs (the generated history is reused); Redis and
the Kafka-protocol broker are fresh per run. The Kubernetes and ArangoDB emulators run as
subprocesses (`python -m tests.emulators.kube|arango`) so they never share the interpreter lock
with the code being measured.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data" / "bench"
KUBE_TOKEN = "bench-token"
ARANGO_ROOT_PASSWORD = "bench-root"
NAMESPACE = "streamforge"
BARE_NAMESPACE = "bench-bare"  # where baselines create the same objects, apart from the product's

RESULTS: list[dict] = []


# ---------------------------------------------------------------------------------------- output

def emit(figure: str, *, value, unit: str, baseline: str, baseline_value, scale: str, target: str,
         meets: bool | None, **extra) -> dict:
    """One JSON line: the figure beside its bare baseline from the same run; ratio = value / baseline."""
    ratio = round(value / baseline_value, 3) if value is not None and baseline_value else None
    line = {"figure": figure, "value": _round(value), "unit": unit, "baseline": baseline,
            "baseline_value": _round(baseline_value), "ratio": ratio, "scale": scale, "target": target,
            "meets": meets, **{k: _round(v) for k, v in extra.items()}}
    RESULTS.append(line)
    print(json.dumps(line), flush=True)
    return line


def _round(value):
    return round(value, 2) if isinstance(value, float) else value


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def summary_table(results: list[dict]) -> str:
    rows = ["| figure | value | baseline | ratio | target | meets |", "|---|---|---|---|---|---|"]
    for r in results:
        extra = "".join(f", {k} {r[k]}" for k in ("p95_ms", "queries", "queries_per_launch") if r.get(k) is not None)
        value = f"{r['value']} {r['unit']}{extra}" if r["value"] is not None else "error"
        meets = {True: "yes", False: "no", None: "–"}[r["meets"]]
        rows.append(f"| {r['figure']} | {value} | {r['baseline']}: {r['baseline_value']} | "
                    f"{r['ratio']}× | {r['target']} | {meets} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------- timing

@dataclass
class Samples:
    ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    @property
    def p99(self) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def sample(fn, *, at_least: int = 5, at_most: int = 30, budget_s: float = 20.0, warmup: int = 1) -> Samples:
    """Milliseconds of `fn()` calls: `at_most` of them, or fewer (never under `at_least`) once
    `budget_s` is spent, so slow figures still finish in reasonable time."""
    for _ in range(warmup):
        fn()
    ms, started = [], time.monotonic()
    while len(ms) < at_most and (len(ms) < at_least or time.monotonic() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
    return Samples(ms)


class QueryCounter:
    """Counts the queries of the default connection in this thread (no cap, unlike the query log)."""

    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)

    def __enter__(self):
        from django.db import connection

        self._wrapper = connection.execute_wrapper(self)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        self._wrapper.__exit__(*exc)

    def __len__(self):
        return self.count


def count_queries(fn) -> int:
    with QueryCounter() as counter:
        fn()
    return counter.count


def process_cpu(pid: int) -> float | None:
    """CPU seconds so far of process `pid` — a PostgreSQL backend, an emulator (Linux /proc; None
    elsewhere or once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------- emulators

class EmulatorProcess:
    """A `python -m tests.emulators.<name>` subprocess; its first stdout line is its URL."""

    def __init__(self, module: str, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", module, "--port", "0", *args], cwd=ROOT,
                                        stdout=subprocess.PIPE, text=True)
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError(f"{module} did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class KubeEmulator(EmulatorProcess):
    def __init__(self):
        super().__init__("tests.emulators.kube", "--token", KUBE_TOKEN)

    def control(self, action: str, body: dict | None = None, **query) -> dict:
        from urllib.parse import urlencode

        url = f"{self.url}/_emulator/{action}" + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method="POST" if data is not None or action == "reset" else "GET",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {KUBE_TOKEN}"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self.control("reset", {})

    def count(self, plural: str = "jobs", namespace: str = NAMESPACE, selector: str = "") -> int:
        query = {"plural": plural, "namespace": namespace, **({"labelSelector": selector} if selector else {})}
        return self.control("count", **query)["count"]

    def seed_running(self, manifests: list[dict], namespace: str = NAMESPACE, chunk: int = 500) -> None:
        for i in range(0, len(manifests), chunk):
            self.control("running", {"namespace": namespace, "jobs": manifests[i:i + chunk]})

    def api_client(self):
        import kubernetes

        config = kubernetes.client.Configuration()
        config.host = self.url
        config.api_key, config.api_key_prefix = {"authorization": KUBE_TOKEN}, {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(config)


# ---------------------------------------------------------------------------------------- servers

@contextlib.contextmanager
def environment(*, fresh: bool):
    """Servers and emulators up, Django configured for them; yields (kube, arango)."""
    import shutil

    from devtools.servers import FAST_CONSUMER_CONFIG, start_kafka, start_postgres, start_redis

    from devtools.process import one_run_at_a_time

    DATA.mkdir(parents=True, exist_ok=True)
    # One run at a time on .data/bench: a second one would restart the first one's PostgreSQL.
    lock = one_run_at_a_time(DATA.parent / "bench.lock", log)
    if fresh:
        shutil.rmtree(DATA, ignore_errors=True)
        DATA.mkdir(parents=True)
    scratch = DATA / f"run-{uuid.uuid4().hex[:6]}"
    kube = arango = pg = None
    try:
        # fsync off, but stopped rather than discarded at the end: the history stays for the next run.
        pg = start_postgres(DATA / "pg", DATA / "logs", durable=False)
        with start_kafka(scratch / "logs") as kafka, start_redis(scratch / "redis", scratch / "logs") as redis:
            kube = KubeEmulator()
            arango = EmulatorProcess("tests.emulators.arango", "--password", ARANGO_ROOT_PASSWORD)
            os.environ.update({
                "DJANGO_SETTINGS_MODULE": "queuemanager.settings",
                "DATABASE_URL": pg.url, "REDIS_URL": redis.url, "CELERY_BROKER_URL": redis.url,
                "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
                "KAFKA_SESSION_TIMEOUT_MS": str(FAST_CONSUMER_CONFIG["session.timeout.ms"]),
                "KAFKA_MAX_POLL_INTERVAL_MS": str(FAST_CONSUMER_CONFIG["max.poll.interval.ms"]),
                "QUEUE_EVENTS_TOPIC": f"bench-events-{uuid.uuid4().hex[:6]}",
                "QUEUE_CONTROL_TOPIC": f"bench-control-{uuid.uuid4().hex[:6]}",
                # Production-like: DEBUG off (no query log, no debug pages); the test client's host allowed.
                "DEBUG": "0", "SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnop",
                "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1", "SECURE_SSL_REDIRECT": "0",
                "STATIC_MANIFEST": "0", "LOG_LEVEL": "warning", "LOG_FORMAT": "text",
                "JOB_LAUNCHER": "kubernetes", "K8S_API_URL": kube.url, "K8S_API_TOKEN": KUBE_TOKEN,
                "K8S_NAMESPACE": NAMESPACE,
                # Celery tasks run inline where a figure needs the whole chain (launch, stop); the
                # figures that must not run them switch this off on the app.
                "CELERY_TASK_ALWAYS_EAGER": "1",
            })
            for key in ("ARANGO_URL", "KUBECONFIG"):
                os.environ.pop(key, None)
            import django

            django.setup()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            yield kube, arango
    finally:
        for emulator in (kube, arango):
            if emulator is not None:
                emulator.stop()
        if pg is not None:
            pg.stop()
        lock.close()
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def celery_eager(eager: bool):
    from benchmarks import targets

    app = targets.celery_app()
    before = app.conf.task_always_eager
    # The app reads Django's CELERY_-prefixed settings first: that key is the one to change.
    app.conf["CELERY_TASK_ALWAYS_EAGER"] = eager
    try:
        yield
    finally:
        app.conf["CELERY_TASK_ALWAYS_EAGER"] = before


@contextlib.contextmanager
def product_process(argv: list[str], *, ready, what: str, timeout: float, **env):
    """A process of the product (a Celery worker, the workload watcher) beside the measured code, as
    deployed: started with the bench's environment plus `env`, yielded once `ready()` holds, stopped
    (SIGTERM, then SIGKILL after 30 s) at the end."""
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env})
    try:
        started = time.monotonic()
        while not ready():
            if process.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
