"""``make run``: the whole StreamForge Queue Manager on one machine, no services needed.

    python -m devtools.run_local

Starts embedded PostgreSQL (data kept in ``.data/postgres`` between runs), Redis
and the tansu Kafka-protocol broker, migrates, ensures an admin user, then runs
every process in :data:`CHILDREN` with prefixed output. Ctrl-C or SIGTERM stops
everything: children get SIGTERM on their whole process group, stragglers get
SIGKILL after :data:`GRACE_SECONDS`, then the servers stop.

Step processes started by the local job launcher live in their own process
groups; stopping them is the application's job (the worker stops what it
launched on shutdown). This supervisor guarantees only that its direct
children's process groups are gone.

Logs of the servers: ``.data/logs/``. The environment, the Kafka address and the settings left for
``manage.py`` (``.data/local.env``) are prepared in :mod:`devtools.local_env`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Sequence

from devtools.local_env import (
    BASE_URL,
    DATA,
    LOCAL_ENV_FILE,
    LOGS,
    ROOT,
    STEPS_DIR,
    WEB_HOST,
    WEB_PORT,
    build_env,
    start_local_kafka,
    stop_step_processes,
    write_local_env,
)
from devtools.servers import ServerProcess, ServerStartError, start_postgres, start_redis

PY = sys.executable
FLOWER_PORT = 5555
GRACE_SECONDS = 10.0
# Restart backoff for children marked restart=True: 1 s, 2 s, 4 s … at most 30 s; a child that ran
# this long before exiting starts again from 1 s.
RESTART_MAX_SECONDS = 30.0
RESTART_STABLE_SECONDS = 60.0


# ------------------------------------------------------------------ child table


def _manage_py() -> str | None:
    return None if (ROOT / "manage.py").is_file() else "manage.py not found"


def _command(name: str) -> Callable[[], str | None]:
    """Check that a Django management command file exists in some app."""
    def check() -> str | None:
        missing = _manage_py()
        if missing:
            return missing
        builtin = {"runserver", "migrate", "shell"}
        if name in builtin or any(ROOT.glob(f"*/management/commands/{name}.py")):
            return None
        return f"management command {name!r} not found (*/management/commands/{name}.py)"
    return check


def _workload_watcher() -> str | None:
    # `make run` launches steps as local processes (local_env: JOB_LAUNCHER=local), so there are no
    # Kubernetes Jobs to watch and the beat's reconcile observes the steps itself; listed here so the
    # process table matches the deployment (deploy/watch-workloads.yaml).
    return _command("watch_workloads")() or (
        "JOB_LAUNCHER=local in make run: no Kubernetes Jobs to watch (the beat's reconcile observes the steps)")


def _celery_app() -> str | None:
    if (ROOT / "queuemanager" / "celery.py").is_file():
        return None
    return "queuemanager/celery.py (the Celery app) not found"


@dataclass(frozen=True)
class Child:
    name: str
    argv: tuple[str, ...]
    check: Callable[[], str | None]  # returns why it cannot start, or None
    # Started again when it exits (with backoff): the Kafka consumers, since librdkafka can
    # abort the process when the broker restarts.
    restart: bool = False


# One line per process. argv is an argument list: never a shell string.
CHILDREN: tuple[Child, ...] = (
    Child("web", (PY, "manage.py", "runserver", f"{WEB_HOST}:{WEB_PORT}", "--noreload"), _command("runserver")),
    Child("worker", (PY, "-m", "celery", "-A", "queuemanager", "worker", "-l", "info", "--concurrency", "2"), _celery_app),
    Child("beat", (PY, "-m", "celery", "-A", "queuemanager", "beat", "-l", "info", "--schedule", str(DATA / "celerybeat-schedule")), _celery_app),
    Child("flower", (PY, "-m", "celery", "-A", "queuemanager", "flower", f"--port={FLOWER_PORT}", "--address=127.0.0.1"), _celery_app),
    Child("control", (PY, "manage.py", "consume_queue_control"), _command("consume_queue_control"), restart=True),
    Child("events", (PY, "manage.py", "consume_queue_events"), _command("consume_queue_events"), restart=True),
    Child("watcher", (PY, "manage.py", "watch_workloads"), _workload_watcher, restart=True),
)


# ---------------------------------------------------------------------- output

_print_lock = threading.Lock()
_COLORS = ("36", "33", "35", "32", "34", "91", "96", "93")
_use_color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def say(prefix: str, text: str, color: str = "1") -> None:
    label = f"{prefix:>9} |"
    if _use_color:
        label = f"\033[{color}m{label}\033[0m"
    with _print_lock:
        sys.stdout.write(f"{label} {text}\n")
        sys.stdout.flush()


def _pump(stream: IO[bytes], prefix: str, color: str) -> None:
    # One thread per child: forwards whole lines so outputs do not interleave.
    for raw in iter(stream.readline, b""):
        say(prefix, raw.decode("utf-8", errors="replace").rstrip("\n"), color)
    stream.close()


# -------------------------------------------------------------------- processes


class Running:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], color: str) -> None:
        self.name, self.proc, self.color = name, proc, color
        self.reported = False
        self.spec: Child | None = None
        self.started_at = time.monotonic()
        self.restarts = 0  # consecutive quick exits, for the backoff
        self.restart_at: float | None = None
        self.pump = threading.Thread(target=_pump, args=(proc.stdout, name, color), daemon=True)
        self.pump.start()


def spawn(name: str, argv: Sequence[str], env: dict[str, str], color: str) -> Running:
    proc = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Own process group: terminal Ctrl-C reaches only us, and we can
        # signal the child together with whatever it forked (Celery pool).
        start_new_session=True,
    )
    return Running(name, proc, color)


def _signal_group(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pid: int) -> bool:
    return _signal_group(pid, 0)


def stop_children(children: list[Running], grace: float | None = None) -> None:
    grace = GRACE_SECONDS if grace is None else grace
    for child in children:
        _signal_group(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    # Wait for whole groups (not just the leader): pool processes may linger.
    while time.monotonic() < deadline:
        for child in children:
            child.proc.poll()
        if not any(_group_alive(c.proc.pid) for c in children):
            break
        time.sleep(0.1)
    for child in children:
        if _signal_group(child.proc.pid, signal.SIGKILL):
            say("run_local", f"{child.name}: killed after {grace:.0f}s grace period", "31")
        child.proc.wait()
        child.pump.join(timeout=2)


class Stop(Exception):
    """Raised when a shutdown signal arrives during setup."""


class Supervisor:
    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.servers: list[ServerProcess] = []
        self.children: list[Running] = []
        self.env: dict[str, str] = {}

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_requested.is_set():
            say("run_local", "second signal: stopping harder", "31")
            return
        self.stop_requested.set()
        say("run_local", f"{signal.Signals(signum).name}: shutting down…", "1")

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise Stop

    # -- setup ------------------------------------------------------------
    def start_servers(self) -> dict[str, str]:
        LOGS.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        pg = start_postgres(DATA / "postgres", LOGS, database="streamforge", durable=True)
        self.servers.append(pg)
        self._check_stop()
        redis = start_redis(DATA / "redis", LOGS)
        self.servers.append(redis)
        self._check_stop()
        kafka, note = start_local_kafka(LOGS)
        self.servers.append(kafka)
        if note:
            say("run_local", note, "33")
        say("run_local", f"servers ready in {time.monotonic() - started:.1f}s (logs: {LOGS})")
        return {
            "DATABASE_URL": pg.url,
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        }

    def run_step(self, name: str, argv: Sequence[str], env: dict[str, str]) -> bool:
        """Run a setup command to completion; True on success."""
        child = spawn(name, argv, env, "90")
        while child.proc.poll() is None:
            if self.stop_requested.wait(0.2):
                stop_children([child], grace=5)
                raise Stop
        child.pump.join(timeout=2)
        if child.proc.returncode != 0:
            say("run_local", f"{name} failed with exit code {child.proc.returncode}", "31")
            return False
        return True

    # -- main loop --------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            env = build_env(self.start_servers())
            admin_user, admin_password = env["DJANGO_SUPERUSER_USERNAME"], env["DJANGO_SUPERUSER_PASSWORD"]
            missing_manage = _manage_py()
            if missing_manage:
                say("run_local", f"skipping migrate and admin user: {missing_manage}", "31")
            else:
                self.run_step("migrate", (PY, "manage.py", "migrate", "--noinput"), env)
                self._check_stop()
                why = _command("ensure_admin")()
                if why:
                    say("run_local", f"cannot create the admin user: {why}", "31")
                else:
                    self.run_step("admin", (PY, "manage.py", "ensure_admin"), env)
                self._check_stop()
            for index, child in enumerate(CHILDREN):
                why = child.check()
                if why:
                    say(child.name, f"NOT STARTED: {why}", "31")
                    continue
                running = spawn(child.name, child.argv, env, _COLORS[index % len(_COLORS)])
                running.spec = child
                self.children.append(running)
            self.env = env
            write_local_env(LOCAL_ENV_FILE, env, pid=os.getpid())
            print_banner(env, admin_user, admin_password, [c.name for c in self.children])
            self.watch()
        except Stop:
            pass
        except ServerStartError as exc:
            say("run_local", f"a server failed to start:\n{exc}", "31")
            return 1
        finally:
            self.shutdown()
        return 0

    def watch(self) -> None:
        while not self.stop_requested.wait(0.5):
            for position, child in enumerate(self.children):
                code = child.proc.poll()
                if code is not None and child.spec is not None and child.spec.restart:
                    self.children[position] = self._restart(child, code)
                elif code is not None and not child.reported:
                    child.reported = True
                    # Keep the others running: one broken process should not
                    # hide what the rest of the system is doing.
                    say(child.name, f"*** EXITED UNEXPECTEDLY with code {code} (others keep running)", "31")
            for server in self.servers:
                if not server.running:
                    say(server.name, f"*** server died; log tail:\n{server.log_tail(15)}", "31")
                    self.stop_requested.set()

    def _restart(self, child: Running, code: int) -> Running:
        """Schedule a restart of an exited child (with backoff), or do it once its time has come."""
        now = time.monotonic()
        if child.restart_at is None:
            if now - child.started_at >= RESTART_STABLE_SECONDS:
                child.restarts = 0
            delay = min(2.0**child.restarts, RESTART_MAX_SECONDS)
            child.restart_at = now + delay
            say(child.name, f"*** EXITED UNEXPECTEDLY with code {code}; restarting in {delay:.0f}s", "31")
            return child
        if now < child.restart_at:
            return child
        child.pump.join(timeout=2)
        assert child.spec is not None
        again = spawn(child.name, child.spec.argv, self.env, child.color)
        again.spec, again.restarts = child.spec, child.restarts + 1
        say(child.name, f"restarted (pid {again.proc.pid}, restart #{again.restarts})", "33")
        return again

    def shutdown(self) -> None:
        # Ignore further Ctrl-C while cleaning up, so nothing is left half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.children:
            say("run_local", f"stopping {', '.join(c.name for c in self.children)}…")
            stop_children(self.children)
        stopped = stop_step_processes(STEPS_DIR)
        if stopped:
            say("run_local", f"stopped {stopped} step process(es) still running")
        for server in reversed(self.servers):
            server.stop()
        say("run_local", "all stopped")


def print_banner(env: dict[str, str], user: str, password: str, running: list[str]) -> None:
    lines = [
        "",
        "StreamForge Queue Manager is running (Ctrl-C stops everything)",
        f"  Admin      {BASE_URL}/admin/   user: {user}   password: {password}",
        f"  Swagger    {BASE_URL}/api/docs/",
        f"  Metrics    {BASE_URL}/metrics",
        f"  Flower     http://127.0.0.1:{FLOWER_PORT}/",
        f"  PostgreSQL {env['DATABASE_URL']}",
        f"  Redis      {env['REDIS_URL']}",
        f"  Kafka      {env['KAFKA_BOOTSTRAP_SERVERS']}",
        f"  Processes  {', '.join(running) or 'none'}",
        f"  Data       {DATA}   (make clean-data resets it)",
        "",
    ]
    with _print_lock:
        print("\n".join(lines), flush=True)


def main() -> int:
    os.chdir(ROOT)
    return Supervisor().run()


if __name__ == "__main__":
    sys.exit(main())
