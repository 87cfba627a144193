"""Pytest plugin: real PostgreSQL, Redis and Kafka-protocol servers for the test session.

Load it from the root conftest (``pytest_plugins = ["tests.servers"]``) and, from
``pytest_configure``, call :func:`ensure_test_database_url` and
:func:`ensure_test_redis_url` so the URLs exist before Django settings are read.

pytest-django reads the settings in ``pytest_load_initial_conftests``, i.e.
*before* any conftest ``pytest_configure`` runs, when ``DJANGO_SETTINGS_MODULE``
comes from the ini file. For that case this module also works as an early plugin
(``-p tests.servers``, which ``make test`` passes): its
``pytest_load_initial_conftests`` wrapper sets the URLs before pytest-django runs.

Environment overrides: if ``DATABASE_URL``, ``REDIS_URL`` or
``KAFKA_BOOTSTRAP_SERVERS`` is already set, that external server is used and
nothing is started (fixtures then return an :class:`ExternalServer` whose
``external`` is True and which cannot be stopped: tests that stop/restart a
server should ``pytest.skip`` when ``server.external``).

Fixtures (session scope): ``postgres_server``, ``redis_server``, ``kafka_server``.
Kafka is only started when a test asks for ``kafka_server``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Union

import pytest

from devtools.servers import (
    KafkaServer,
    PostgresServer,
    RedisServer,
    start_kafka,
    start_postgres,
    start_redis,
)

__all__ = [
    "ExternalServer",
    "ensure_test_database_url",
    "ensure_test_kafka_bootstrap",
    "ensure_test_redis_url",
    "kafka_server",
    "postgres_server",
    "redis_server",
    "stop_test_servers",
]


@dataclass(frozen=True)
class ExternalServer:
    """A server given by environment variable; we neither started nor own it."""

    url: str
    external: bool = True

    @property
    def bootstrap(self) -> str:
        return self.url

    def stop(self) -> None:
        raise RuntimeError(f"{self.url} is an external server; it cannot be stopped by tests")

    def restart(self) -> None:
        raise RuntimeError(f"{self.url} is an external server; it cannot be restarted by tests")


AnyPostgres = Union[PostgresServer, ExternalServer]
AnyRedis = Union[RedisServer, ExternalServer]
AnyKafka = Union[KafkaServer, ExternalServer]

_lock = threading.Lock()
_tmp_root: Path | None = None
# Only servers this process started; the owner pid guards against a forked
# child (e.g. a multiprocessing test) stopping them from its atexit.
_owned: dict[str, tuple[int, PostgresServer | RedisServer | KafkaServer]] = {}
_external: dict[str, ExternalServer] = {}


def _tmp() -> Path:
    global _tmp_root
    if _tmp_root is None:
        _tmp_root = Path(tempfile.mkdtemp(prefix="streamforge-test-servers-"))
        # Our own folder: as root, PostgreSQL runs as another account, which must enter it (search only,
        # no listing) to keep the throwaway cluster here instead of in a shared folder.
        _tmp_root.chmod(0o711)
        atexit.register(stop_test_servers)
    return _tmp_root


def ensure_test_database_url() -> str:
    """Return DATABASE_URL, starting a throwaway PostgreSQL once if it is unset."""
    with _lock:
        if "postgres" in _owned:
            return _owned["postgres"][1].url
        existing = os.environ.get("DATABASE_URL")
        if existing:
            _external.setdefault("postgres", ExternalServer(existing))
            return existing
        base = _tmp()
        server = start_postgres(base / "postgres", base / "logs", durable=False)
        _owned["postgres"] = (os.getpid(), server)
        os.environ["DATABASE_URL"] = server.url
        return server.url


def ensure_test_redis_url() -> str:
    """Return REDIS_URL, starting Redis once if unset; also sets CELERY_BROKER_URL if unset."""
    with _lock:
        if "redis" in _owned:
            url = _owned["redis"][1].url
        elif os.environ.get("REDIS_URL"):
            url = os.environ["REDIS_URL"]
            _external.setdefault("redis", ExternalServer(url))
        else:
            base = _tmp()
            server = start_redis(base / "redis", base / "logs")
            _owned["redis"] = (os.getpid(), server)
            url = os.environ["REDIS_URL"] = server.url
        os.environ.setdefault("CELERY_BROKER_URL", url)
        return url


def ensure_test_kafka_bootstrap() -> str:
    """Return KAFKA_BOOTSTRAP_SERVERS, starting tansu once if it is unset."""
    with _lock:
        if "kafka" in _owned:
            return _owned["kafka"][1].bootstrap  # type: ignore[union-attr]
        existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if existing:
            _external.setdefault("kafka", ExternalServer(existing))
            return existing
        server = start_kafka(_tmp() / "logs")
        _owned["kafka"] = (os.getpid(), server)
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = server.bootstrap
        return server.bootstrap


def stop_test_servers() -> None:
    """Stop every server this process started and delete their data. Idempotent."""
    global _tmp_root
    with _lock:
        for name in ("kafka", "redis", "postgres"):
            owner_and_server = _owned.get(name)
            if owner_and_server is None or owner_and_server[0] != os.getpid():
                continue
            del _owned[name]
            server = owner_and_server[1]
            # discard() also deletes a cluster kept outside the temporary folder.
            server.discard() if isinstance(server, PostgresServer) else server.stop()
        if _tmp_root is not None and not _owned:
            shutil.rmtree(_tmp_root, ignore_errors=True)
            _tmp_root = None


def _handle(name: str) -> PostgresServer | RedisServer | KafkaServer | ExternalServer:
    if name in _owned:
        return _owned[name][1]
    return _external[name]


# ------------------------------------------------------------------ pytest hooks


def _is_info_only(args: list[str]) -> bool:
    return any(a in ("--help", "-h", "--version", "-V") for a in args)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    # Only runs when loaded early with ``-p tests.servers``; the wrapper runs
    # before pytest-django's hook, which loads the Django settings.
    if not _is_info_only(args):
        from tests.environment import apply_test_env

        apply_test_env()
        ensure_test_database_url()
        ensure_test_redis_url()
    return (yield)


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_test_servers()


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres_server() -> AnyPostgres:
    """PostgreSQL handle (``.url``); started with DATABASE_URL if unset."""
    ensure_test_database_url()
    return _handle("postgres")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def redis_server() -> AnyRedis:
    """Redis handle (``.url``, ``.stop()``, ``.restart()`` on the same port)."""
    ensure_test_redis_url()
    return _handle("redis")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def kafka_server() -> AnyKafka:
    """tansu handle (``.bootstrap``, ``.stop()``, ``.restart()``); started lazily."""
    ensure_test_kafka_bootstrap()
    return _handle("kafka")  # type: ignore[return-value]
