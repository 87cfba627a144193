"""Typed readers for settings that come from the environment (and an optional `.env`, or `make run`'s file).

Each reader raises ImproperlyConfigured naming the variable, so a bad value stops start-up
with a message an operator can act on instead of a traceback deep inside a library.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def load_dotenv_file(path: Path) -> None:
    """Load `.env` without overriding variables already set in the process environment."""
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


# `make run` names itself in `.data/local.env` by "<pid>:<start time>" (see load_local_run_env).
LOCAL_RUN_PROCESS = "LOCAL_RUN_PROCESS"


def process_identity(pid: int) -> str | None:
    """``<pid>:<start time>`` of a running process, None if it is gone: unlike a pid, never names a later process."""
    try:
        # Field 22 (start time since boot); the name in field 2 may hold spaces, so split after it.
        return f"{pid}:{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        if Path("/proc/self/stat").exists():
            return None
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"{pid}:"


def load_local_run_env(path: Path) -> None:
    """Take the settings a running `make run` left in ``path``, so manage.py works in a second terminal.

    Read only when DATABASE_URL is set neither in the environment nor in `.env`: every deployment and
    the test suite set it, so a development run's file never reaches them. Variables already set win.
    A file whose `make run` has ended stops start-up with that reason instead of a confusing one later.
    """
    if os.environ.get("DATABASE_URL") or not path.is_file():
        return
    from dotenv import dotenv_values

    values = dotenv_values(path, interpolate=False)
    writer = values.pop(LOCAL_RUN_PROCESS, None) or ""
    pid = writer.partition(":")[0]
    if not pid.isdigit() or process_identity(int(pid)) != writer:  # ended, or its pid now names another process
        raise ImproperlyConfigured(
            f"{path} is left from a `make run` that is no longer running (pid {pid or '?'}): "
            "start `make run` in another terminal, or set DATABASE_URL"
        )
    for name, value in values.items():
        if value is not None:
            os.environ.setdefault(name, value)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_required(name: str) -> str:
    value = env_str(name)
    if not value:
        raise ImproperlyConfigured(f"{name} must be set")
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_url(name: str, default: str = "", *, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ImproperlyConfigured(f"{name} must be a URL with scheme {' or '.join(schemes)}")
    return value


def env_path(name: str, *, must_exist: bool = True) -> str:
    value = env_str(name)
    if value and must_exist and not Path(value).exists():
        raise ImproperlyConfigured(f"{name} points to {value!r}, which does not exist")
    return value


def database_from_url(name: str, url: str) -> dict:
    """Turn `postgresql://user:pass@host:port/db?host=/socket/dir` into a Django DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(f"{name} must start with postgresql://")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = query.pop("host", None) or unquote(parts.hostname or "")
    db_name = unquote(parts.path.lstrip("/"))
    if not db_name:
        raise ImproperlyConfigured(f"{name} must name a database (postgresql://…/DBNAME)")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name} has an invalid port") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db_name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or query.pop("port", "") or ""),
        "OPTIONS": query,
    }
