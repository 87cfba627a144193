"""The system under test, scaled out as in production, on this machine; and the means to hurt it.

`System` starts PostgreSQL, Redis and the tansu broker (or uses servers it is given), migrates,
creates an operator with an API token, then the product's processes: `gunicorn` (web), two Celery
workers, two beat schedulers, two replicas of each Kafka consumer in one group. Each process is a
child in its own process group (so SIGKILL reaches its forks: Celery's pool, gunicorn's workers),
with its output in `<base>/logs/<name>.log`. `stop()` ends every group it started, the step
processes the local launcher left, then the servers — also after a failure or Ctrl-C (`with`).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from chaos import targets
from devtools.process import free_port
from devtools.servers import KafkaServer, start_postgres, start_redis

PY = sys.executable
ROOT = targets.ROOT
# SIGTERM, then SIGKILL after this: the checks are done by then, so a graceful end proves nothing, and
# gunicorn's own graceful timeout (30 s) made every system's stop take the whole wait.
STOP_GRACE = 3.0


def say(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


class Child:
    """One product process (a replica of a role); restartable with the same argv and environment."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, ready: str = ""):
        self.name, self.argv, self.env, self.ready = name, argv, env, ready
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts}: {self.argv}\n".encode())
            log.flush()
            self._offset = self.log_path.stat().st_size
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the log of this start shows `ready` (empty: at once); raises with the log tail."""
        deadline = time.monotonic() + timeout
        while self.ready:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                if self.ready.encode() in log.read():
                    return
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready:\n{self.tail()}")
            time.sleep(0.3)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (SIGKILL: no cleanup at all, like an OOM kill)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait()

    def stop(self, grace: float = STOP_GRACE) -> None:
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)  # whatever is left of the group (pool children)
        self.proc.wait()

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""


@dataclass
class Servers:
    """Where the system's backing servers are; `owned` are stopped with the system."""

    database_url: str
    redis_url: str
    kafka_bootstrap: str
    owned: list = field(default_factory=list)
    kafka: KafkaServer | None = None  # when we started it
    template: str = ""  # a migrated database each system's own is cloned from (see `migrate_template`)
    template_token: str = ""  # the API token of the operator in that database


def start_servers(base: Path) -> Servers:
    logs = base / "logs"
    pg = start_postgres(base / "postgres", logs, database="streamforge", durable=False)
    servers = Servers(pg.url, "", "", owned=[pg])
    try:
        redis = start_redis(base / "redis", logs)
        servers.owned.append(redis)
        servers.redis_url = redis.url
        # tansu's PostgreSQL storage engine is "not enabled" in the build here, so trying it first only
        # cost three failed starts per run: memory storage from the start. A restart would lose its topics,
        # so R2 runs a tansu of its own and cuts the connections to it instead (chaos/scenario_broker.py).
        say("broker: tansu with memory storage (not durable: a restart loses topics and offsets)")
        kafka = KafkaServer(logs)
        kafka.start()
        servers.owned.append(kafka)
        servers.kafka, servers.kafka_bootstrap = kafka, kafka.bootstrap
    except BaseException:
        for server in reversed(servers.owned):
            server.stop()
        raise
    return servers


# Scenarios may run in two lanes at once (`--lanes`): one migrates the template while nobody clones it,
# and clones are made one at a time (PostgreSQL refuses a clone while the template is in use).
CREATION_LOCK = threading.RLock()
# Systems started and not stopped yet: an interrupted run stops those of every lane.
LIVE: set = set()


def _create_database(url: str, name: str, *, template: str = "") -> str:
    import psycopg

    with CREATION_LOCK, psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return url.rsplit("/", 1)[0] + f"/{name}"


TEMPLATE_DATABASE = "chaos_template"


def migrate_template(servers: Servers, base: Path) -> None:
    """Migrate one database that every system's own is then cloned from: a scenario's system starts
    without its own `migrate` (a Django start and every migration: ~20 s on a loaded 2-core machine)."""
    import psycopg

    with CREATION_LOCK:
        if not servers.template:
            _migrate_template(servers, base, psycopg)


def _migrate_template(servers: Servers, base: Path, psycopg) -> None:
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        # Fresh each run: a template left by an earlier run may predate a migration.
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DATABASE}"')
    template = System(base / "template", servers, seed=0, layout=Layout(0, 0, 0, 0, 0), database=TEMPLATE_DATABASE)
    template._run("migrate", [PY, *targets.MANAGE, "migrate", "--noinput"])
    # The operator and its API token too: two Django starts fewer per scenario (the clones share the token,
    # each in a database of its own).
    template._run("admin", [PY, *targets.MANAGE, "ensure_admin"])
    servers.template_token = template._run("token", [PY, *targets.MANAGE, "create_api_token", "chaos"]).split()[-1]
    servers.template = TEMPLATE_DATABASE


@dataclass
class Layout:
    """How many of each process: production's shape by default."""

    workers: int = 2
    beats: int = 2
    control: int = 2
    events: int = 2
    web_workers: int = 2


class System:
    """The product, running; `children[name]` are its processes (web, worker-1, beat-2, control-1 …)."""

    def __init__(self, base: Path, servers: Servers, *, seed: int, layout: Layout | None = None,
                 topic_prefix: str = "", extra_env: dict[str, str] | None = None, database: str = ""):
        self.base, self.servers, self.seed = base, servers, seed
        self.layout = layout or Layout()
        self.logs = base / "logs"
        self.steps_dir = base / "steps"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        self.web_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        # Cloned from the migrated template when there is one: `migrate` then has nothing to do.
        self.migrated = bool(database and servers.template)
        self.database_url = (_create_database(servers.database_url, database, template=servers.template)
                             if database else servers.database_url)
        self.control_topic = f"{topic_prefix}queue-control"
        self.events_topic = f"{topic_prefix}queue-events"
        self.children: dict[str, Child] = {}
        self.token = ""
        self.env = self._env(topic_prefix, extra_env or {})

    # -- environment ------------------------------------------------------------------------------
    def _env(self, prefix: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "KAFKA_", "QUEUE_", "ARANGO_"))}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update({
            "DJANGO_SETTINGS_MODULE": "queuemanager.settings",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.servers.redis_url,
            "CELERY_BROKER_URL": self.servers.redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.servers.kafka_bootstrap,
            "QUEUE_CONTROL_TOPIC": self.control_topic,
            "QUEUE_EVENTS_TOPIC": self.events_topic,
            "KAFKA_CONSUMER_GROUP": f"{prefix}queue-manager",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_MAX_POLL_INTERVAL_MS": "20000",
            "KAFKA_LAG_LOG_SECONDS": "60",
            "JOB_LAUNCHER": "local",
            "LOCAL_LAUNCHER_DIR": str(self.steps_dir),
            "MANAGER_BASE_URL": self.base_url,
            "DEBUG": "1",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            # Fast, small steps and short deadlines: many runs and recoveries fit in a few minutes.
            "SIMULATOR_TICK": "0.3",
            "SIMULATOR_TICKS": "4",
            "SIMULATOR_RECORDS": "400",
            "RECONCILE_INTERVAL_SECONDS": "2",
            "LAUNCH_STUCK_SECONDS": "8",
            "LAUNCH_RETRY_BACKOFF_SECONDS": "1",
            "STOP_GRACE_SECONDS": "4",
            "DRAIN_IDLE_SECONDS": "6",
            "CELERY_TASK_SOFT_TIME_LIMIT": "30",
            "CELERY_TASK_TIME_LIMIT": "40",
            "DJANGO_SUPERUSER_USERNAME": "chaos",
            "DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(12),
            "DJANGO_SUPERUSER_EMAIL": "chaos@localhost",
            "WEB_CONCURRENCY": str(self.layout.web_workers),
            "GUNICORN_THREADS": "8",
            "PORT": str(self.web_port),
        })
        env.update(extra)
        return env

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> System:
        started = time.monotonic()
        LIVE.add(self)
        if self.migrated:  # cloned from the template: migrated, with the operator and its token
            self.token = self.servers.template_token
        else:
            self._run("migrate", [PY, *targets.MANAGE, "migrate", "--noinput"])
            self._run("admin", [PY, *targets.MANAGE, "ensure_admin"])
            self.token = self._run("token", [PY, *targets.MANAGE, "create_api_token", "chaos"]).strip().splitlines()[-1]
        for child in self._plan():
            self.children[child.name] = child
            child.start()
        for child in self.children.values():
            child.wait_ready()
        self.wait_web()
        say(f"{self.base.name}: {len(self.children)} processes up in {time.monotonic() - started:.0f}s")
        return self

    def _plan(self) -> list[Child]:
        celery = [PY, "-m", "celery", "-A", targets.CELERY_APP]
        plan = [Child("web", [PY, "-m", "gunicorn", "-c", targets.GUNICORN_CONFIG, "--bind",
                              f"127.0.0.1:{self.web_port}", targets.WSGI_APP], self.env, self.logs, "Booting worker")]
        for n in range(1, self.layout.workers + 1):
            plan.append(Child(f"worker-{n}", [*celery, "worker", "-n", f"chaos{n}@%h", "-l", "info", "--concurrency", "2",
                                              "--without-gossip", "--without-mingle"], self.env, self.logs, " ready."))
        for n in range(1, self.layout.beats + 1):
            plan.append(Child(f"beat-{n}", [*celery, "beat", "-l", "info", "-s", str(self.base / f"beat-{n}-schedule")],
                              self.env, self.logs, "beat: Starting"))
        for n in range(1, self.layout.control + 1):
            plan.append(Child(f"control-{n}", [PY, *targets.CONTROL_CONSUMER], self.env, self.logs))
        for n in range(1, self.layout.events + 1):
            plan.append(Child(f"events-{n}", [PY, *targets.EVENTS_CONSUMER], self.env, self.logs))
        return plan

    def _run(self, name: str, argv: list[str]) -> str:
        done = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def wait_web(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.base_url + targets.HEALTH_LIVE, timeout=3) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"web did not answer:\n{self.children['web'].tail()}")
            time.sleep(0.3)

    def kill(self, name: str) -> None:
        """SIGKILL the process group of one child (no cleanup, no goodbye)."""
        self.children[name].kill(signal.SIGKILL)

    def restart(self, name: str, *, wait: bool = True) -> None:
        child = self.children[name]
        if child.alive:
            child.kill(signal.SIGKILL)
        child.start()
        if wait:
            child.wait_ready()
            if name == "web":
                self.wait_web()

    def revive_all(self) -> list[str]:
        """Start again every child that is not running (e.g. a consumer librdkafka aborted)."""
        revived = [name for name, child in self.children.items() if not child.alive]
        for name in revived:
            self.restart(name)
        return revived

    def stop(self) -> None:
        started = time.monotonic()
        LIVE.discard(self)
        for child in self.children.values():
            with contextlib.suppress(Exception):
                child.kill(signal.SIGTERM)
        deadline = started + STOP_GRACE
        for child in self.children.values():
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
            child.kill(signal.SIGKILL)
        stop_step_processes(self.steps_dir)
        if self.children:
            say(f"{self.base.name}: stopped in {time.monotonic() - started:.0f}s")

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the API as a client sees it --------------------------------------------------------------
    def api(self, method: str, path: str, body: object = None, *, token: str | None = None,
            timeout: float = 30.0) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is None:
            token = self.token
        if token:
            headers["Authorization"] = f"Token {token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:500].decode("utf-8", "replace")


def stop_step_processes(steps_dir: Path) -> int:
    """SIGKILL every step process (and its runner) the local launcher left under `steps_dir`."""
    count = 0
    for process_file in steps_dir.glob(f"*/{targets.PROCESS_FILE}"):
        try:
            process = json.loads(process_file.read_text())
        except ValueError:
            continue
        for kill, pid in ((os.killpg, process.get("pgid")), (os.kill, process.get("runner_pid"))):
            with contextlib.suppress(TypeError, ValueError, ProcessLookupError, PermissionError):
                kill(int(pid), signal.SIGKILL)
                count += 1
    return count
