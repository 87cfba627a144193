"""Logs: context fields (queue_id, step, task ids) as JSON fields, secrets masked everywhere."""
from __future__ import annotations

import io
import json
import logging

import pytest
from django.conf import settings

from ops.logging import log_context


@pytest.fixture
def log_output():
    """A logger with the console handler's filters and the production JSON formatter, writing to a buffer."""
    from pythonjsonlogger.json import JsonFormatter

    from ops.logging import ContextFilter, RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(settings.LOGGING["formatters"]["json"]["fmt"]))
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("streamforge.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield logger, lines
    logger.removeHandler(handler)


def test_it_wires_context_and_redaction_into_the_console_handler():
    console = settings.LOGGING["handlers"]["console"]
    assert console["filters"] == ["log_context", "redact_secrets"]
    assert settings.LOGGING["filters"]["log_context"]["()"] == "ops.logging.ContextFilter"
    assert settings.LOGGING["filters"]["redact_secrets"]["()"] == "ops.logging.RedactingFilter"
    root = logging.getLogger()
    assert any(type(f).__name__ == "RedactingFilter" for h in root.handlers for f in h.filters)


def test_it_writes_queue_id_and_step_as_json_fields(log_output):
    logger, lines = log_output
    with log_context(queue_id="btcusdt-api-candles-5m-20240601-x7k2p9", step="loader"):
        with log_context(target="loader-producer"):
            logger.info("launching")
    logger.info("outside")

    inside, outside = lines()
    assert inside["message"] == "launching"
    assert inside["queue_id"] == "btcusdt-api-candles-5m-20240601-x7k2p9"
    assert inside["step"] == "loader" and inside["target"] == "loader-producer"
    assert "queue_id" not in outside


def test_it_sets_the_celery_task_id_while_a_task_runs(log_output):
    from queuemanager.celery import app

    logger, lines = log_output

    @app.task(name="tests.ops.log_something", shared=False)
    def log_something():
        logger.info("in task")

    result = log_something.apply(task_id="3f1c-task")  # runs here, with the task signals
    logger.info("after task")

    assert result.successful()
    in_task, after = lines()
    assert in_task["task_id"] == "3f1c-task" and in_task["task_name"] == "tests.ops.log_something"
    assert "task_id" not in after


def test_it_masks_secrets_from_settings_urls_and_extra_fields(log_output, settings):
    logger, lines = log_output
    settings.KAFKA_PASSWORD = "kafka-pass-4242"
    settings.ARANGO_PASSWORD = "arango-pass-777"
    logger.info("connecting with %s", settings.KAFKA_PASSWORD)
    logger.warning("broker at redis://admin:s3cr3t-redis@redis:6379/0 refused", extra={"dsn": "postgresql://qm:pg-pass-1@db/qm"})
    logger.info("login", extra={"queue_id": "q1", "password_hint": f"token={settings.TELEMETRY_TOKEN}"})
    try:
        raise ValueError(f"bad credentials arango-pass-777 for {settings.SECRET_KEY}")
    except ValueError:
        logger.exception("mirror failed")

    output = "\n".join(json.dumps(line) for line in lines())
    for secret in ("kafka-pass-4242", "s3cr3t-redis", "pg-pass-1", "arango-pass-777", settings.SECRET_KEY, settings.TELEMETRY_TOKEN):
        assert secret not in output
    first, url, extra, failure = lines()
    assert first["message"] == "connecting with ***"
    assert "redis://admin:***@redis:6379/0" in url["message"]
    assert extra["queue_id"] == "q1"
    assert "ValueError" in failure["exc_info"] and "***" in failure["exc_info"]


def test_it_appends_context_to_the_readable_format():
    from ops.logging import ContextFilter, ContextTextFormatter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    with log_context(queue_id="q-42"):
        ContextFilter().filter(record)
    text = ContextTextFormatter(format="%(levelname)s %(message)s").format(record)
    assert text == "INFO hello [queue_id=q-42]"


def test_it_masks_secrets_inside_dicts_lists_and_nested_extra_fields(log_output, settings):
    """Issue #10 §5 (redaction): non-string `extra=` fields — dicts, lists, tuples, nested — are masked too."""
    logger, lines = log_output
    settings.KAFKA_PASSWORD = "kafka-pass-4242"
    logger.info(
        "connecting",
        extra={
            "config": {"bootstrap": "kafka:9092", "sasl.password": "not-a-setting-pw1", "port": 9092},
            "urls": ["redis://admin:s3cr3t-redis@redis:6379/0", "http://plain.example/"],
            "nested": {"levels": [{"deeper": ("kafka-pass-4242", {"api_key": "k-123456"})}]},
            "attempt": 3,
            "enabled": True,
        },
    )

    output = "\n".join(json.dumps(line) for line in lines())
    for secret in ("kafka-pass-4242", "s3cr3t-redis", "not-a-setting-pw1", "k-123456"):
        assert secret not in output
    (line,) = lines()
    # Structure and harmless values survive: only the secrets are replaced.
    assert line["config"] == {"bootstrap": "kafka:9092", "sasl.password": "***", "port": 9092}
    assert line["urls"] == ["redis://admin:***@redis:6379/0", "http://plain.example/"]
    assert line["nested"] == {"levels": [{"deeper": ["***", {"api_key": "***"}]}]}
    assert line["attempt"] == 3 and line["enabled"] is True


def test_it_masks_secrets_in_non_string_arguments_and_objects(log_output, settings):
    """Issue #10 §5 (redaction): dicts/lists passed as `%s` args and arbitrary objects in `extra=` are masked."""
    logger, lines = log_output
    settings.ARANGO_PASSWORD = "arango-pass-777"

    class Connection:
        def __str__(self) -> str:
            return "Connection(http://root:arango-pass-777@arango:8529)"

    logger.info("settings %s and %r", {"ARANGO": {"password": "arango-pass-777"}}, ["token=abc-def-123"])
    logger.info("client", extra={"connection": Connection(), "raw": b"user:arango-pass-777"})

    output = "\n".join(json.dumps(line, default=str) for line in lines())
    assert "arango-pass-777" not in output and "abc-def-123" not in output
    args_line, object_line = lines()
    assert "***" in args_line["message"]
    assert object_line["connection"] == "Connection(http://root:***@arango:8529)"
