"""Logging helpers: context fields (queue_id, step, task ids) and redaction of secrets.

    with log_context(queue_id=queue.queue_id, step=step.name):
        logger.info("launching")      # → {"message": "launching", "queue_id": "...", "step": "..."}

Both filters are attached to the console handler in settings.LOGGING, so every record that is
written — from our code or a library — passes through them.
"""
from __future__ import annotations

import logging
import re
import traceback
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Iterator

CONTEXT_FIELDS = ("queue_id", "step", "target", "task_id", "task_name", "command_id")
MASK = "***"

_context: ContextVar[dict[str, str]] = ContextVar("streamforge_log_context", default={})


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add fields to every log record written inside the block (nested blocks add to the outer)."""
    token = _push(fields)
    try:
        yield
    finally:
        _context.reset(token)


def _push(fields: dict[str, object]) -> Token:
    merged = {**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None and v != ""}}
    return _context.set(merged)


def current_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the current log context onto the record (explicit `extra=` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# user:password@ in any URL-like string (redis://, postgresql://, amqp://, http://…).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s/]+)@")
_KEY_VALUE = re.compile(r"(?i)(?P<key>\b[\w-]*(?:password|passwd|secret|token|api_key)[\w-]*\b[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}]+)")
_SECRET_SETTINGS = ("KAFKA_PASSWORD", "ARANGO_PASSWORD", "SECRET_KEY", "TELEMETRY_TOKEN", "K8S_API_TOKEN",
                    "TELEMETRY_SIGNING_KEY")
# Attributes every LogRecord has; anything else on a record came from `extra=` or a filter.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def secret_values() -> list[str]:
    """Current secret values from settings, longest first (so a secret containing another is masked whole)."""
    try:
        from django.conf import settings

        values = [str(getattr(settings, name, "") or "") for name in _SECRET_SETTINGS]
        values.append(str(settings.DATABASES.get("default", {}).get("PASSWORD") or ""))
    except Exception:  # noqa: BLE001 — settings not configured (e.g. a tool importing this module)
        return []
    # Very short values would mask ordinary words; settings validation keeps real secrets long.
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    if not text:
        return text
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{MASK}", text)


# A mapping key that names a secret: its scalar value is masked whatever it looks like.
_SECRET_KEY_NAME = re.compile(r"(?i)password|passwd|secret|token|api_key")
# Deeper structures are rendered as text (and redacted as text): a self-referencing dict cannot loop.
_MAX_DEPTH = 10


def redact_value(value: object, secrets: list[str] | None = None, _depth: int = 0) -> object:
    """`value` with secrets masked at any depth: strings, dicts, lists/tuples/sets, bytes and objects.

    Structure and harmless values are kept (JSON logs stay queryable); an object whose text holds a
    secret becomes its redacted text, any other object is left for the formatter to render.
    """
    if secrets is None:
        secrets = secret_values()
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    if _depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return {key: _redact_item(key, item, secrets, _depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [redact_value(item, secrets, _depth + 1) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else _safe_str(value)
    redacted = redact(text, secrets)
    return redacted if redacted != text or _depth >= _MAX_DEPTH else value


def _redact_item(key: object, item: object, secrets: list[str], depth: int) -> object:
    named_secret = isinstance(key, str) and _SECRET_KEY_NAME.search(key)
    if named_secret and item not in (None, "") and not isinstance(item, (bool, dict, list, tuple, set, frozenset)):
        return MASK
    return redact_value(item, secrets, depth)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 — a broken __str__ must not lose the record
        return f"<{type(value).__name__}>"


class RedactingFilter(logging.Filter):
    """Masks secret values and credentials in the message, extra fields and traceback of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 — a bad format string must not lose the record
            message = str(record.msg)
        record.msg, record.args = redact(message, secrets), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _redact_item(key, value, secrets, 0))
        if record.exc_info:
            # Render now so the formatter prints the redacted text instead of re-rendering.
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text, record.exc_info = redact(text, secrets), None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


# ------------------------------------------------------------------ Celery tasks

_task_tokens: dict[str, Token] = {}


def _on_task_prerun(task_id=None, task=None, args=None, kwargs=None, **_):
    fields: dict[str, object] = {"task_id": task_id, "task_name": getattr(task, "name", None)}
    _task_tokens[task_id] = _push(fields)


def _on_task_postrun(task_id=None, **_):
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            _context.reset(token)
        except ValueError:  # reset from another context (should not happen with prefork); just clear
            _context.set({})


def connect_celery_signals() -> None:
    from celery.signals import task_postrun, task_prerun

    task_prerun.connect(_on_task_prerun, dispatch_uid="ops.logging.task_prerun", weak=False)
    task_postrun.connect(_on_task_postrun, dispatch_uid="ops.logging.task_postrun", weak=False)


class ContextTextFormatter(logging.Formatter):
    """The readable local format, with the context fields appended as key=value."""

    def __init__(self, format: str | None = None, fmt: str | None = None, **kwargs) -> None:
        # dictConfig passes the "format" key as is when a factory ("()") is given.
        super().__init__(fmt=fmt or format, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if getattr(record, key, None)]
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [{' '.join(fields)}]{newline}{rest}"
