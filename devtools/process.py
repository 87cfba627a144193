"""A server child process on a loopback port, shared by the embedded servers (devtools.servers).

Every server is a child process started from an argument list (never a shell string), in its own
process group, listening on 127.0.0.1 only, with its output appended to ``<log_dir>/<name>.log``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server did not become ready; the message includes its log tail."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free right now on ``host``.

    There is a small race until the server binds it; :meth:`ServerProcess.start`
    retries with a new port if the server dies during startup.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound on ``host`` right now (a socket in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


class ServerProcess:
    """A server child process on a fixed loopback port.

    Subclasses provide :meth:`command`, :meth:`check_ready` and :attr:`url`.
    The port is chosen once (free port unless given) and kept across
    :meth:`restart`, so URLs handed out earlier stay valid.
    """

    name = "server"
    #: signal asking the server for a clean shutdown
    stop_signal: int = signal.SIGTERM
    #: False for handles that wrap a server we did not start (see tests/servers.py)
    external = False

    def __init__(
        self,
        log_dir: Path | str,
        *,
        port: int | None = None,
        ready_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.log_dir = Path(log_dir).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.log"
        self._auto_port = port is None
        self.port: int = port if port is not None else free_port()
        self.host = LOOPBACK
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to be provided by subclasses -------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def check_ready(self) -> None:
        """Raise any exception while the server cannot serve a request yet."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Hook run before each launch (e.g. initdb)."""

    def after_ready(self) -> None:
        """Hook run once the server answers (e.g. create the database)."""

    def popen_kwargs(self) -> dict[str, Any]:
        return {}

    # -- lifecycle ---------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def start(self) -> "ServerProcess":
        """Launch the server and wait until it is ready. No-op if running."""
        if self.running:
            return self
        attempts = 3 if self._auto_port else 1
        for attempt in range(1, attempts + 1):
            try:
                self._launch_and_wait()
                return self
            except _DiedEarly as exc:
                # Most likely lost the free-port race: pick another port once more.
                if attempt == attempts:
                    raise ServerStartError(str(exc)) from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _launch_and_wait(self) -> None:
        self.prepare()
        argv = self.command()
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} starting {self.name}: {argv}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session => own process group: a terminal Ctrl-C does not
                # hit it directly, and stop() can signal the whole group.
                start_new_session=True,
                close_fds=True,
                **self.popen_kwargs(),
            )
        deadline = time.monotonic() + self.ready_timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise _DiedEarly(
                    f"{self.name} exited with code {code} during startup "
                    f"(port {self.port}). Log {self.log_path} ends with:\n{self.log_tail()}"
                )
            try:
                self.check_ready()
                break
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last_error = exc
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} not ready on port {self.port} after {self.ready_timeout:.0f}s "
                    f"(last error: {last_error!r}). Log {self.log_path} ends with:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        self.after_ready()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the server to exit, SIGKILL its process group after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        if proc.poll() is None:
            try:
                proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Also reaps helpers the server forked into its group (postgres backends).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        self._proc = None

    def restart(self) -> "ServerProcess":
        """Stop (if running) and start again on the same port."""
        self.stop()
        self._auto_port = False  # the URL was handed out: keep the port
        return self.start()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"


class _DiedEarly(Exception):
    pass


def one_run_at_a_time(lock_path: Path, say) -> Any:
    """Hold an exclusive lock on `lock_path` for as long as the returned file stays open; if another
    run holds it, say so and wait. For tools that reset a folder of their own (make bench, make chaos)."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"another run holds {lock_path.name} in this work tree; waiting for it to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock
