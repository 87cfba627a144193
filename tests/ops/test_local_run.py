"""`manage.py` in a second terminal beside `make run` (issue #11, part 1, first case).

`make run` leaves its settings in `.data/local.env`; the settings read that file only when no
DATABASE_URL is set, and only while the `make run` that wrote it is still running. Each test runs
`manage.py` in a copy of the project (a fresh clone has no `.data/`), as a subprocess with a clean
environment, against the real servers of the test session.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from dotenv import dotenv_values
from psycopg import sql

from devtools import local_env
from devtools.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a user's second terminal has: no project variables at all.
CLEAN_ENV = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}


def clone_project(dest: Path) -> Path:
    """The project's source as a fresh clone has it (no .venv, no .data); the venv's python runs it."""
    shutil.copytree(
        ROOT, dest,
        ignore=shutil.ignore_patterns(".venv", ".git", ".data", "tests", "__pycache__", "*.pyc", ".pytest_cache",
                                      "staticfiles", "benchmarks"),
    )
    return dest


def manage(clone: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=clone, env=CLEAN_ENV if env is None else env,
        capture_output=True, text=True, timeout=240,
    )


@pytest.fixture
def local_database(postgres_server):
    """A new, empty database on the session's PostgreSQL, as `make run` has on first start."""
    name = f"local_run_{uuid.uuid4().hex[:10]}"
    admin_url = postgres_server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def running_clone(tmp_path, local_database, redis_server, kafka_server):
    """A clone whose `.data/local.env` was written the way `make run` writes it, by this (live) process."""
    clone = clone_project(tmp_path / "clone")
    data = clone / ".data"
    env = local_env.build_env(
        {
            "DATABASE_URL": local_database,
            "REDIS_URL": redis_server.url,
            "CELERY_BROKER_URL": redis_server.url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_server.bootstrap,
        },
        data=data,
    )
    local_env.write_local_env(data / "local.env", env, pid=os.getpid())
    return clone


def test_it_runs_the_readme_commands_in_a_second_terminal(running_clone, local_database):
    """Case 1: with `make run` up, `manage.py migrate`, `create_api_token alice` and `kafka_send` work as written."""
    migrated = manage(running_clone, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(local_database, autocommit=True) as conn:
        conn.execute("INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, first_name,"
                     " last_name, email, date_joined) VALUES ('alice', '!', false, false, true, '', '', '', now())")

    token = manage(running_clone, "create_api_token", "alice")

    assert token.returncode == 0, token.stderr
    with psycopg.connect(local_database) as conn:
        stored = conn.execute("SELECT t.key FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id"
                              " WHERE u.username = 'alice'").fetchone()
    assert stored is not None and token.stdout.strip() == stored[0]
    sent = manage(running_clone, "kafka_send", '{"command":"ping","command_id":"local-run-ping"}')
    assert sent.returncode == 0, sent.stderr
    assert "sent to queue-control" in sent.stdout


def test_it_keeps_the_local_settings_private(running_clone):
    """Case 1: the file holds the secret key and telemetry token, so only its owner may read it."""
    mode = stat.S_IMODE((running_clone / ".data" / "local.env").stat().st_mode)
    assert mode == 0o600


def test_it_ignores_the_file_when_the_environment_names_a_database(running_clone, local_database):
    """Case 1: a deployment (DATABASE_URL set) never picks up a development run's settings, not even DEBUG."""
    env = {**CLEAN_ENV, "DATABASE_URL": local_database, "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "example.com"}

    shown = manage(running_clone, "shell", "-v", "0", "-c",
                   "from django.conf import settings; print(settings.DEBUG, settings.KAFKA_ENABLED)", env=env)

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["False", "False"]


def test_it_says_when_make_run_has_stopped(running_clone):
    """Case 1: a file left by a `make run` that is gone is not used; the error says to start `make run`."""
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = dotenv_values(running_clone / ".data" / "local.env", interpolate=False)
    local_env.write_local_env(running_clone / ".data" / "local.env", env, pid=supervisor.pid)
    supervisor.kill()  # a hard-killed `make run` leaves its file behind
    supervisor.wait()

    result = manage(running_clone, "check")

    assert result.returncode != 0
    assert "make run" in result.stderr and "no longer running" in result.stderr
    assert "SECRET_KEY must be set" not in result.stderr


# ------------------------------------------------------------------ the Kafka address (part 1, case 3)


def test_it_starts_the_local_broker_on_the_fixed_port_when_free(tmp_path):
    """Case 3: `make run`'s broker listens on the fixed port, so the README's kcat lines paste as written."""
    port = free_port()

    kafka, note = local_env.start_local_kafka(tmp_path, port=port)

    with kafka:
        assert kafka.bootstrap == f"127.0.0.1:{port}" and note == ""


def test_it_takes_another_port_when_the_fixed_one_is_taken_and_says_so(tmp_path):
    """Case 3: a busy fixed port does not stop `make run`: another port is used and named in the output."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        kafka, note = local_env.start_local_kafka(tmp_path, port=port)

        with kafka:
            assert kafka.port != port
            assert f"port {port} is taken" in note and kafka.bootstrap in note


def test_it_uses_9092_for_make_run():
    """Case 3: the default is Kafka's usual port, as in the README."""
    assert local_env.KAFKA_PORT == 9092
    assert "KAFKA=127.0.0.1:9092" in (ROOT / "README.md").read_text()
