"""End-to-end fixtures: a real Celery worker (with beat) in a subprocess, the local launcher and
the worker simulator reporting over HTTP to a live server, all on the real test PostgreSQL/Redis."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

from jobs.launchers import _build as build_launcher
from tests.kafkabus.conftest import kafka_env, kafka_topics  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def _test_database_url() -> str:
    """DATABASE_URL pointing at the test database pytest-django created."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + settings.DATABASES["default"]["NAME"]))


class WorkerProcess:
    """`celery worker -B` as a subprocess; kill() and start() let tests simulate a crash."""

    def __init__(self, env: dict, log_path: Path):
        self.env, self.log_path, self.proc = env, log_path, None

    def start(self) -> None:
        schedule = Path(self.env["LOCAL_LAUNCHER_DIR"]).parent / "beat-schedule"
        command = [
            sys.executable, "-m", "celery", "-A", "queuemanager", "worker", "-B", "-l", "info",
            "--concurrency", "2", "-s", str(schedule), "--without-gossip", "--without-mingle",
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while b" ready." not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, size: int = 6000) -> str:
        return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")


class Pipeline:
    """What a test needs: the worker, the step folders, fault injection."""

    def __init__(self, worker: WorkerProcess, steps_dir: Path, faults_file: Path):
        self.worker, self.steps_dir, self.faults_file = worker, steps_dir, faults_file

    def inject(self, faults: dict) -> None:
        self.faults_file.write_text(json.dumps(faults))

    def step_dir(self, step) -> Path:
        return self.steps_dir / step.job_name

    def starts_of(self, step) -> int:
        """How many times a worker process started for this step (from its output)."""
        log = self.step_dir(step) / "output.log"
        return log.read_text().count(" starting for ") if log.exists() else 0


def _kill_step_processes(steps_dir: Path) -> None:
    for process_file in steps_dir.glob("*/process.json"):
        try:
            os.killpg(json.loads(process_file.read_text())["pgid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError, KeyError):
            pass


def _worker_env(live_server, tmp_path, settings, steps_dir: Path, faults_file: Path) -> dict:
    faults_file.write_text("{}")
    settings.LOCAL_LAUNCHER_DIR = steps_dir
    settings.MANAGER_BASE_URL = live_server.url
    build_launcher.cache_clear()
    return {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "MANAGER_BASE_URL": live_server.url,
        "LOCAL_LAUNCHER_DIR": str(steps_dir),
        "JOB_LAUNCHER": "local",
        "SIMULATOR_TICK": "0.2",
        "SIMULATOR_TICKS": "5",
        "SIMULATOR_FAULTS_FILE": str(faults_file),
        "RECONCILE_INTERVAL_SECONDS": "1",
        "LAUNCH_STUCK_SECONDS": "4",
        "STOP_GRACE_SECONDS": "3",
        "DRAIN_IDLE_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def pipeline(live_server, tmp_path, settings, redis_server):
    steps_dir, faults_file = tmp_path / "steps", tmp_path / "faults.json"
    env = _worker_env(live_server, tmp_path, settings, steps_dir, faults_file)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    yield Pipeline(worker, steps_dir, faults_file)
    worker.stop()
    _kill_step_processes(steps_dir)
    build_launcher.cache_clear()


class ConsumerProcess:
    """`manage.py consume_queue_<topic>` as a subprocess, stopped with SIGTERM like in production."""

    def __init__(self, command: str, env: dict, log_path: Path):
        self.log_path = log_path
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", command], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")


class KafkaPipeline(Pipeline):
    """A pipeline whose commands and telemetry go through Kafka: topics of this test, both consumers running."""

    def __init__(self, worker, steps_dir, faults_file, *, topics, consumers: list[ConsumerProcess]):
        super().__init__(worker, steps_dir, faults_file)
        self.topics, self.consumers = topics, consumers

    def logs(self) -> str:
        parts = [f"--- worker ---\n{self.worker.log_tail()}"]
        parts += [f"--- {c.log_path.name} ---\n{c.log_tail()}" for c in self.consumers]
        return "\n".join(parts)


@pytest.fixture
def kafka_pipeline(live_server, tmp_path, settings, redis_server, kafka_topics, kafka_env):
    """Like `pipeline`, with Kafka on everywhere: the worker (publish_stop), the steps (simulator
    telemetry, stop commands, data topics) and `consume_queue_events`/`consume_queue_control`,
    all on this test's topics (kafka_topics also set them in this process's settings)."""
    steps_dir, faults_file = tmp_path / "steps", tmp_path / "faults.json"
    env = {**_worker_env(live_server, tmp_path, settings, steps_dir, faults_file), **kafka_env}
    consumers = [
        ConsumerProcess(command, env, tmp_path / f"{command}.log")
        for command in ("consume_queue_events", "consume_queue_control")
    ]
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.start()
        yield KafkaPipeline(worker, steps_dir, faults_file, topics=kafka_topics, consumers=consumers)
    finally:
        worker.stop()
        for consumer in consumers:
            consumer.stop()
        _kill_step_processes(steps_dir)
        build_launcher.cache_clear()


def wait_for(predicate, *, timeout: float, message: str, worker: WorkerProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    detail = f"\n--- worker log ---\n{worker.log_tail()}" if worker else ""
    raise AssertionError(f"timed out after {timeout}s waiting for: {message}{detail}")


def status_is(queue, *statuses):
    """A wait_for predicate: the queue (re-read) has one of these statuses."""
    def check():
        queue.refresh_from_db()
        return queue.status in statuses
    return check


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
