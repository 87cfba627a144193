"""Audit and history: who started, stopped or retried what, from where, with what result (issue #15 §7),
and the ends of a step's earlier runs, kept when a retry starts the next one.

An own model rather than Django's LogEntry: LogEntry needs a user, and commands from Kafka have none
(their "who" is the client's `command_id`). The admin's History page of a queue shows these entries
(console/admin/queue.py). Rows are written by the orchestration services (jobs/services.py) in the
same transaction as the change they record, and by the entry points for what never reaches a service
(a Kafka stop for an unknown queue, a replayed `command_id`).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditAction(models.TextChoices):
    START = "start", "start"
    STOP = "stop", "stop"
    RETRY = "retry", "retry"
    STEP_STOP = "step_stop", "step stop"


class AuditResult(models.TextChoices):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the same request again (same payload, already stopping, replayed command_id)
    CONFLICT = "conflict"  # the queue_id exists with another payload
    REJECTED = "rejected"  # invalid input or nothing to do (e.g. nothing to retry)


@dataclass(frozen=True)
class Origin:
    """Where a request came from: the source (api, admin, kafka), the user, the HTTP client's address
    or the Kafka command's id."""

    source: str = "system"
    user: object = None
    address: str = ""
    command_id: str = ""

    @classmethod
    def http(cls, request, *, source: str) -> Origin:
        # REMOTE_ADDR only: X-Forwarded-For is whatever the client wrote unless a trusted proxy set it.
        return cls(source=source, user=request.user, address=request.META.get("REMOTE_ADDR", "") or "")

    @property
    def who(self) -> str:
        if getattr(self.user, "is_authenticated", False) and getattr(self.user, "username", ""):
            return self.user.username
        if self.command_id:
            return f"kafka command {self.command_id}"
        return self.source if self.source == "kafka" else "system"


class AuditEntry(models.Model):
    """One start, stop, retry or step stop as it was requested, with its result."""

    queue = models.ForeignKey("queues.Queue", null=True, blank=True, on_delete=models.CASCADE, related_name="audit")
    queue_ref = models.CharField(max_length=200, blank=True, help_text="The queue_id as requested (kept for rejections).")
    step_name = models.CharField(max_length=50, blank=True)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    result = models.CharField(max_length=16, choices=AuditResult.choices)
    reason = models.TextField(blank=True)
    source = models.CharField(max_length=16, help_text="api, admin, kafka or system")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    who = models.CharField(max_length=250, help_text="The username, or the Kafka command's id.")
    address = models.CharField(max_length=64, blank=True, help_text="The HTTP client's address.")
    command_id = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True, help_text="E.g. the steps retried.")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-pk"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["queue", "-at"], name="audit_queue_at")]

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """A readable line, e.g. "stop of step loader by alice (admin from 10.0.0.1): accepted"."""
        what = f"{self.get_action_display()}"
        if self.step_name:
            what += f" of step {self.step_name}"
        where = self.source + (f" from {self.address}" if self.address else "")
        text = f"{what} by {self.who} ({where}): {self.result}"
        return f"{text} — {self.reason}" if self.reason else text


class StepRun(models.Model):
    """How an earlier run of a step ended, written when a retry starts the next run."""

    step = models.ForeignKey("queues.QueueRequest", on_delete=models.CASCADE, related_name="past_runs")
    run = models.PositiveIntegerField()
    state = models.CharField(max_length=16)
    reported_status = models.CharField(max_length=32, blank=True)
    records_written = models.BigIntegerField(default=0)
    message = models.TextField(blank=True)
    job_name = models.CharField(max_length=63, blank=True)
    launch_attempts = models.PositiveIntegerField(default=0)
    launched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    logs = models.TextField(blank=True, help_text="The tail of the run's logs, if it was kept.")
    retried_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["step", "-run"]
        constraints = [models.UniqueConstraint(fields=["step", "run"], name="unique_step_run")]

    def __str__(self) -> str:
        return f"run {self.run}: {self.state}"


def audit_record(*, origin: Origin, action: str, result: str, queue=None, queue_ref: str = "", step_name: str = "",
                 reason: str = "", detail: dict | None = None) -> AuditEntry:
    """Record one request and its result (joins the caller's transaction, if any)."""
    user = origin.user if getattr(origin.user, "is_authenticated", False) and getattr(origin.user, "pk", None) else None
    return AuditEntry.objects.create(
        queue=queue,
        queue_ref=_text(queue_ref or (queue.queue_id if queue is not None else ""), 200),
        step_name=_text(step_name, 50),
        action=action,
        result=result,
        reason=_text(reason),
        source=_text(origin.source, 16),
        user=user,
        who=_text(origin.who, 250),
        address=_text(origin.address, 64),
        command_id=_text(origin.command_id, 200),
        detail=detail or {},
    )


def _text(value: str, limit: int | None = None) -> str:
    """Client-supplied text as PostgreSQL can store it: it refuses NUL in text (a refused request whose
    field names held one failed to be recorded, and the client got a 500 instead of its 400)."""
    value = value.replace("\x00", "\N{REPLACEMENT CHARACTER}")
    # JSON may carry lone surrogates ("\ud800"), which no UTF-8 database text can hold
    value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit is not None else value


def step_run_record(*, step) -> StepRun:
    """Keep how the step's current run ended, before a retry resets it."""
    fields = ("state", "reported_status", "records_written", "message", "job_name", "launch_attempts",
              "launched_at", "started_at", "finished_at", "extra", "logs")
    values = {name: getattr(step, name) for name in fields}
    run, _ = StepRun.objects.update_or_create(step=step, run=step.run, defaults=values)
    return run


def errors_summary(errors: dict, *, limit: int = 1000) -> str:
    """A PayloadError's field messages on one line, for the audit's reason."""
    parts = [f"{path}: {'; '.join(str(m) for m in messages)}" for path, messages in errors.items()]
    text = " | ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"
