"""A bad environment value stops start-up with a message naming the variable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _check(**changes) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_it_passes_the_check_with_the_test_environment():
    result = _check()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DEBUG", "maybe"),
        ("API_PAGE_SIZE", "abc"),
        ("API_PAGE_SIZE", "0"),
        ("DATABASE_URL", None),
        ("DATABASE_URL", "mysql://nope"),
        ("ARANGO_URL", "not a url"),
        ("ARANGO_URL", "ftp://arango:8529"),
        ("JOB_LAUNCHER", "docker"),
        ("STOP_GRACE_SECONDS", "soon"),
    ],
)
def test_it_refuses_to_start_with_a_bad_value_naming_the_variable(variable, value):
    result = _check(**{variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr.strip().splitlines()[-1]


def test_it_requires_a_secret_key_when_debug_is_off():
    result = _check(SECRET_KEY="", DEBUG="0")
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_it_requires_allowed_hosts_when_debug_is_off():
    """Issue #10 §5 (ALLOWED_HOSTS): with DEBUG off an empty ALLOWED_HOSTS stops start-up, naming the variable."""
    for value in (None, "", " , "):
        result = _check(ALLOWED_HOSTS=value, DEBUG="0")
        assert result.returncode != 0, value
        last_line = result.stderr.strip().splitlines()[-1]
        assert "ImproperlyConfigured" in last_line and "ALLOWED_HOSTS" in last_line


def test_it_defaults_allowed_hosts_to_localhost_with_debug_on():
    """Issue #10 §5 (ALLOWED_HOSTS): local development (DEBUG on, as `make run`) still starts without the variable."""
    result = _check(ALLOWED_HOSTS=None, DEBUG="1")
    assert result.returncode == 0, result.stderr
