"""The local launcher: each step runs as a child process of the StreamForge worker simulator.

A step gets exactly the environment its Kubernetes Job would get (jobs.environment), plus how to
reach the manager when Kafka is off. Its state lives in LOCAL_LAUNCHER_DIR/<job name>/: the
environment, the pid (process.json), the exit status (exit.json) and the output (output.log).
Launch is idempotent under a file lock: a second launch of the same step finds process.json and
returns the same process. Stop is SIGTERM to the step's process group; forced stop is SIGKILL.
"""
from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from jobs.credentials import TOKEN_FILE_ENV, TOKEN_FILE_NAME, step_credential_issue, write_private_file
from jobs.environment import secret_values, step_environment
from jobs.launchers.base import LaunchError, Observation, Phase
from queues.models import QueueRequest

# Simulator knobs passed through from the manager's own environment (speed, sizes).
PASS_THROUGH_PREFIX = "SIMULATOR_"
# Variables a child needs to run Python at all.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


class LocalLauncher:
    name = "local"

    def __init__(self, root: Path, command: list[str]):
        self.root = root
        self.command = command

    @classmethod
    def from_settings(cls) -> LocalLauncher:
        # The simulator needs no Django settings or database, like a real worker.
        command = [sys.executable, "-m", "devtools.simulator"]
        return cls(Path(settings.LOCAL_LAUNCHER_DIR), command)

    def state_dir(self, step: QueueRequest) -> Path:
        return self.root / step.job_name

    def environment(self, step: QueueRequest) -> dict[str, str]:
        env = {key: os.environ[key] for key in BASE_ENV if key in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.BASE_DIR), os.environ.get("PYTHONPATH")]))
        env.update({k: v for k, v in os.environ.items() if k.startswith(PASS_THROUGH_PREFIX)})
        env.update(step_environment(step))
        env.update(secret_values())
        env.update(
            {
                "MANAGER_TELEMETRY_URL": f"{settings.MANAGER_BASE_URL.rstrip('/')}/api/telemetry/",
                # The step's own credential, by file: a process's environment is readable by
                # whatever inspects processes (ps e, /proc/<pid>/environ of a crash dump, …).
                TOKEN_FILE_ENV: str(self.state_dir(step) / TOKEN_FILE_NAME),
                "PYTHONUNBUFFERED": "1",
            }
        )
        fault = self._fault_for(step)
        if fault:
            env["SIMULATOR_FAULT"] = json.dumps(fault)
        return env

    def _fault_for(self, step: QueueRequest) -> dict | None:
        """Injected faults for tests and demos: SIMULATOR_FAULTS_FILE maps `queue_id/step` globs to faults."""
        path = os.environ.get("SIMULATOR_FAULTS_FILE")
        if not path or not Path(path).is_file():
            return None
        rules = json.loads(Path(path).read_text() or "{}")
        subject = f"{step.queue.queue_id}/{step.name}"
        for pattern, fault in rules.items():
            if fnmatch.fnmatchcase(subject, pattern):
                return fault
        return None

    def launch(self, step: QueueRequest) -> dict:
        directory = self.state_dir(step)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(directory / "launch.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                existing = _read_json(directory / "process.json")
                if existing:
                    return {"launcher": self.name, "dir": str(directory), **existing}
                # Both hold credentials, as a Secret would: private from the moment they exist.
                write_private_file(directory / TOKEN_FILE_NAME, step_credential_issue(step=step).encode())
                write_private_file(directory / "env.json", json.dumps(self.environment(step)).encode())
                runner = subprocess.run(
                    [sys.executable, "-m", "jobs.launchers.runner", str(directory), "--", *self.command],
                    cwd=settings.BASE_DIR, timeout=30, check=False, close_fds=True,
                )
                if runner.returncode != 0:
                    raise LaunchError(f"the runner exited with code {runner.returncode}")
                process = _wait_for(directory / "process.json", timeout=10)
                if process is None:
                    raise LaunchError("the step process did not start within 10 s")
                # Fault injection: widen the window between "process started" and "launch recorded".
                time.sleep(float((self._fault_for(step) or {}).get("launch_delay", 0)))
                return {"launcher": self.name, "dir": str(directory), **process}
        except OSError as exc:
            raise LaunchError(f"cannot start the step process: {exc}", permanent=isinstance(exc, PermissionError)) from exc
        except subprocess.TimeoutExpired as exc:
            raise LaunchError("the runner did not detach within 30 s") from exc

    def status(self, step: QueueRequest) -> Observation:
        directory = self.state_dir(step)
        ended = _read_json(directory / "exit.json")
        if ended:
            code = ended["returncode"]
            if code == 0:
                return Observation(Phase.SUCCEEDED, exit_code=0)
            reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return Observation(Phase.FAILED, reason=reason, exit_code=code)
        process = _read_json(directory / "process.json")
        if not process:
            return Observation(Phase.MISSING, reason="no process was started for this step")
        if _alive(process["pid"]):
            return Observation(Phase.RUNNING)
        if _alive(process.get("runner_pid", 0)):
            return Observation(Phase.RUNNING)  # the runner is recording the exit status
        # Both gone without an exit record: the machine rebooted or someone killed the runner too.
        return Observation(Phase.MISSING, reason="the step process vanished without an exit status")

    def stop(self, step: QueueRequest, *, force: bool) -> None:
        process = _read_json(self.state_dir(step) / "process.json")
        if not process:
            return
        try:
            os.killpg(process["pgid"], signal.SIGKILL if force else signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise LaunchError(f"not allowed to signal the step process: {exc}", permanent=True) from exc

    def stop_many(self, steps: list[QueueRequest], *, force: bool) -> None:
        for step in steps:  # a signal per process: nothing to batch
            self.stop(step, force=force)

    def discard(self, step: QueueRequest) -> None:
        # The state directory is per run (job name), so this never touches another run's process.
        self.stop(step, force=True)

    def logs(self, step: QueueRequest, *, tail_bytes: int) -> str:
        path = self.state_dir(step) / "output.log"
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - tail_bytes))
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def read_log(self, step: QueueRequest, *, offset: int, limit: int) -> tuple[str, int]:
        """Whole lines of the output from byte `offset` (at most `limit` bytes) and the offset after them."""
        try:
            with open(self.state_dir(step) / "output.log", "rb") as handle:
                handle.seek(max(offset, 0))
                data = handle.read(limit)
        except FileNotFoundError:
            return "", offset
        if len(data) == limit and b"\n" in data:
            data = data[: data.rindex(b"\n") + 1]  # never split a line (or a UTF-8 character) between two reads
        return data.decode("utf-8", "replace"), max(offset, 0) + len(data)

    def manifest(self, step: QueueRequest) -> dict:
        env = step_environment(step)
        return {"launcher": self.name, "command": self.command, "env": env, "secrets": sorted(secret_values())}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _wait_for(path: Path, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = _read_json(path)
        if data:
            return data
        time.sleep(0.02)
    return None


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
