"""What `make run` sets up before it starts its processes: the Kafka broker's address, the children's
environment, and the settings left in ``.data/local.env`` for ``manage.py`` in a second terminal.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path

from devtools.servers import KafkaServer, ServerStartError, port_is_free, start_kafka
from queuemanager.env import LOCAL_RUN_PROCESS, process_identity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".data"
STEPS_DIR = DATA / "steps"
METRICS_DIR = DATA / "prometheus"
LOGS = DATA / "logs"
LOCAL_ENV_FILE = DATA / "local.env"
WEB_HOST, WEB_PORT = "127.0.0.1", 8000
BASE_URL = f"http://{WEB_HOST}:{WEB_PORT}"
# Kafka's usual port, so the README's kcat lines paste as written (another one only when it is taken).
KAFKA_PORT = 9092


def start_local_kafka(log_dir: Path, *, port: int = KAFKA_PORT) -> tuple[KafkaServer, str]:
    """tansu on ``port``, or on a free port when that one is taken; the note (else "") says which."""
    if port_is_free(port):
        try:
            return start_kafka(log_dir, port=port), ""
        except ServerStartError:
            pass  # taken between the check and the start: fall through to a free port
    kafka = start_kafka(log_dir)
    return kafka, f"port {port} is taken: Kafka listens on {kafka.bootstrap} (use that as KAFKA in the kcat lines)"


def stop_step_processes(steps_dir: Path) -> int:
    """SIGKILL the step processes the local launcher left running (they live in their own groups).

    On the next start reconcile finds them gone without an exit status and marks them `lost`.
    """
    count = 0
    for process_file in steps_dir.glob("*/process.json"):
        if (process_file.parent / "exit.json").exists():
            continue
        try:
            process = json.loads(process_file.read_text())
        except ValueError:
            continue
        for kill, pid in ((os.killpg, process.get("pgid")), (os.kill, process.get("runner_pid"))):
            try:
                kill(int(pid), signal.SIGKILL)
                count += kill is os.killpg
            except (TypeError, ValueError, ProcessLookupError, PermissionError):
                pass
    return count


def _persistent_secret(path: Path, length: int = 32) -> str:
    """Read a generated secret from ``path``, creating it (mode 600) the first time."""
    if path.is_file():
        value = path.read_text().strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(length)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def reset_metrics_dir(metrics_dir: Path = METRICS_DIR) -> None:
    """Multiprocess metrics files of a previous run would be added to this run's figures."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()


def build_env(server_env: dict[str, str], *, data: Path = DATA) -> dict[str, str]:
    """The environment of every child: the servers' URLs plus local-development settings kept in ``data``."""
    reset_metrics_dir(data / "prometheus")
    env = dict(os.environ)
    env.update(server_env)
    env.update(
        {
            "JOB_LAUNCHER": "local",
            "DEBUG": "1",
            "SECRET_KEY": _persistent_secret(data / "secret_key", 50),
            "MANAGER_BASE_URL": BASE_URL,
            # Legacy shared telemetry token: accepted only with TELEMETRY_SHARED_TOKEN_ALLOWED=1.
            # Simulated steps report with their own per-step credential (jobs/credentials.py).
            "TELEMETRY_TOKEN": _persistent_secret(data / "telemetry_token", 32),
            "LOCAL_LAUNCHER_DIR": str(data / "steps"),
            # Every process writes its metrics here; the web's /metrics adds them up.
            "PROMETHEUS_MULTIPROC_DIR": str(data / "prometheus"),
            # Children write through pipes: unbuffered keeps lines timely.
            "PYTHONUNBUFFERED": "1",
        }
    )
    if not (env.get("DJANGO_SUPERUSER_USERNAME") and env.get("DJANGO_SUPERUSER_PASSWORD")):
        env["DJANGO_SUPERUSER_USERNAME"] = "admin"
        env["DJANGO_SUPERUSER_PASSWORD"] = _persistent_secret(data / "admin_password", 12)
    env.setdefault("DJANGO_SUPERUSER_EMAIL", "admin@localhost")
    return env


# What a `manage.py` in a second terminal needs to act on this run. Not the metrics directory: a
# one-off command's figures would stay in the web's sums after it exits.
LOCAL_ENV_KEYS = (
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "KAFKA_BOOTSTRAP_SERVERS", "JOB_LAUNCHER", "DEBUG",
    "SECRET_KEY", "MANAGER_BASE_URL", "TELEMETRY_TOKEN", "LOCAL_LAUNCHER_DIR",
)


def write_local_env(path: Path, env: dict[str, str], *, pid: int) -> None:
    """Leave this run's settings in ``path`` (mode 600) for ``manage.py`` (see load_local_run_env).

    The running supervisor is named by pid and start time, so the settings can tell a file left by a
    run that has ended from the live one, even after the pid was reused.
    """
    identity = process_identity(pid)
    if identity is None:
        raise ValueError(f"process {pid} is not running")
    lines = [
        "# Written by `make run` for manage.py in another terminal; used only while that run is up",
        "# and only when DATABASE_URL is not set (queuemanager/env.py: load_local_run_env).",
        f'{LOCAL_RUN_PROCESS}="{identity}"',
    ]
    for key in LOCAL_ENV_KEYS:
        if env.get(key):
            escaped = env[key].replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key}="{escaped}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(partial, 0o600)  # O_CREAT's mode does not apply to a file left by an interrupted write
    os.replace(partial, path)  # a reader never sees half a file
