"""The Kubernetes API and ArangoDB emulators, each in a process of its own, and their control surfaces."""
from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from chaos import targets
from chaos.harness import PY, ROOT


class EmulatorProcess:
    """`python -m tests.emulators.<kube|arango> --port N`: started, restartable on the same port, stopped."""

    def __init__(self, name: str, module_argv: list[str], log_dir: Path, extra_argv: tuple[str, ...] = (),
                 headers: dict[str, str] | None = None):
        from devtools.process import free_port

        self.name, self.module_argv, self.extra_argv, self.headers = name, module_argv, extra_argv, headers or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> EmulatorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([PY, *self.module_argv, "--port", str(self.port), *self.extra_argv],
                                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers (a 401 without credentials): up
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} emulator did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def control(self, method: str, path: str, body: object = None, timeout: float = 30.0) -> dict:
        request = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode()
                                         if body is not None else None, headers={"Content-Type": "application/json", **self.headers})
        # A `refuse` fault closes the listener for a few seconds, the control surface's too: its calls
        # (never faulted themselves) wait that out; R6 once crashed turning the faults off meanwhile.
        # API paths go through the faults and raise, as a client would see them.
        deadline = time.monotonic() + (timeout if path.startswith("/_emulator/") else 0)
        while True:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())
            except (urllib.error.HTTPError, TimeoutError):
                raise
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                    raise
            time.sleep(0.2)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def kube(log_dir: Path) -> EmulatorProcess:
    return EmulatorProcess("kube-emulator", targets.KUBE_EMULATOR, log_dir,
                           headers={"Authorization": f"Bearer {targets.KUBE_EMULATOR_TOKEN}"})
