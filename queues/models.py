"""Queues (pipeline runs), their steps (QueueRequest), the edges between steps and telemetry."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class QueueStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


QueueStatus.ACTIVE = (QueueStatus.PENDING, QueueStatus.RUNNING, QueueStatus.STOPPING)
QueueStatus.TERMINAL = (QueueStatus.SUCCEEDED, QueueStatus.FAILED, QueueStatus.STOPPED)


class StepState(models.TextChoices):
    WAITING = "waiting"
    LAUNCHING = "launching"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    LOST = "lost"


# Grouped constants: where a step is in its life.
StepState.LAUNCHED = (StepState.LAUNCHING, StepState.PENDING, StepState.RUNNING, StepState.STOPPING)
StepState.TERMINAL = (StepState.SUCCEEDED, StepState.FAILED, StepState.STOPPED, StepState.LOST)
StepState.FAILED_STATES = (StepState.FAILED, StepState.LOST)
StepState.RETRYABLE = (StepState.FAILED, StepState.STOPPED, StepState.LOST)
# Ends whose workload must not outlive the step ("no workload without a live step"): a failed Job
# would be rerun up to backoffLimit and a streaming one would run forever. A succeeded step's
# workload ends by itself (reconcile removes it if it does not).
StepState.DISCARD_WORKLOAD = (StepState.FAILED, StepState.STOPPED, StepState.LOST)


class DependencyKind(models.TextChoices):
    READY = "ready", "ready (upstream running)"
    SUCCESS = "success", "success (upstream succeeded)"


# Large columns no list row shows: left out of list reads (the queue page reads them).
LIST_DEFERRED = ("payload", "canonical_payload")


class QueueQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=QueueStatus.ACTIVE)

    def listed(self):
        """The queue list (API, legacy list): newest first.

        No step counts here: an annotation would group every step of the history before LIMIT.
        The list counts the steps of the shown page only, with `step_counts`.
        """
        return self.select_related("submitted_by").defer(*LIST_DEFERRED).order_by("-created_at", "-pk")

    @staticmethod
    def step_counts(queue_ids) -> dict[int, dict[str, int]]:
        """{queue id: {step state: steps in it}} for these queues: one query over their steps only."""
        counts: dict[int, dict[str, int]] = {pk: {} for pk in queue_ids}
        rows = (
            QueueRequest.objects.filter(queue_id__in=list(counts))
            .order_by()
            .values_list("queue_id", "state")
            .annotate(n=models.Count("pk"))
        )
        for queue_id, state, n in rows:
            counts[queue_id][state] = n
        return counts

    def needing_advance(self):
        """Queues with step changes no queue_advance has acted on yet (partial index)."""
        return self.filter(changes_pending__gt=0)

    def lock(self, pk: int, *, missing_ok: bool = False):
        """Lock one queue row for changes to it or its steps (inside a transaction).

        Everything that changes several steps of a queue takes this lock first, so writers of one
        queue are serialised and never deadlock on step rows. FOR NO KEY UPDATE does not block
        inserts that merely reference the queue (telemetry rows).
        """
        queryset = self.select_for_update(no_key=True).filter(pk=pk)
        return queryset.first() if missing_ok else queryset.get()


class Queue(models.Model):
    queue_id = models.CharField(max_length=40, unique=True)
    symbol = models.CharField(max_length=20, db_index=True)
    time_range_start = models.DateField(null=True, blank=True)
    time_range_end = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=QueueStatus.choices, default=QueueStatus.PENDING, db_index=True)
    payload = models.JSONField(help_text="The payload as submitted.")
    canonical_payload = models.JSONField(help_text="The payload normalised, for idempotent resubmission.")
    warnings = models.JSONField(default=list, blank=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=16, default="api", help_text="api, admin or kafka")
    message = models.TextField(blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    changes_pending = models.PositiveIntegerField(
        default=1,
        help_text="Step changes not yet acted on by queue_advance (a new queue needs its first advance). "
        "Reconcile advances only queues where this is above zero.",
    )

    objects = QueueQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Reconcile's work list: a handful of rows among the whole history.
            models.Index(fields=["id"], name="queue_changes_pending", condition=models.Q(changes_pending__gt=0)),
            # The lists (API cursor, admin) page newest first, also within a status or symbol: an index
            # per order, so a page is an index range scan whatever the history's size.
            models.Index(fields=["created_at", "id"], name="queue_list_order"),
            models.Index(fields=["status", "created_at", "id"], name="queue_list_by_status"),
            models.Index(fields=["symbol", "created_at", "id"], name="queue_list_by_symbol"),
        ]
        permissions = [
            ("start_queue", "Can start queues"),
            ("stop_queue", "Can stop queues and steps"),
            ("override_image", "Can run steps with an image from any registry"),
        ]

    def __str__(self) -> str:
        return self.queue_id

    @property
    def time_range(self) -> str | None:
        if self.time_range_start and self.time_range_end:
            return f"{self.time_range_start.isoformat()}:{self.time_range_end.isoformat()}"
        return None

    @property
    def is_active(self) -> bool:
        return self.status in QueueStatus.ACTIVE

    def derive_status(self, step_states: list[str]) -> str:
        """The queue's status from its steps' states — the one place this rule lives.

        A failed step makes the queue `failed` once nothing else can still run or is stopping;
        until then it shows `running` (FAILURE_POLICY=continue) or `stopping`.
        """
        if any(s in StepState.FAILED_STATES for s in step_states):
            if not any(s in StepState.LAUNCHED or s == StepState.WAITING for s in step_states):
                return QueueStatus.FAILED
            if self.stop_requested_at or StepState.STOPPING in step_states:
                return QueueStatus.STOPPING
            return QueueStatus.RUNNING
        if self.stop_requested_at:
            return QueueStatus.STOPPING if any(s in StepState.LAUNCHED for s in step_states) else QueueStatus.STOPPED
        if step_states and all(s == StepState.SUCCEEDED for s in step_states):
            return QueueStatus.SUCCEEDED
        if step_states and all(s in StepState.TERMINAL for s in step_states):
            return QueueStatus.STOPPED  # some step was stopped (by a worker or an operator) and nothing runs
        if any(s != StepState.WAITING for s in step_states):
            return QueueStatus.RUNNING
        return QueueStatus.PENDING


class StepQuerySet(models.QuerySet):
    def launched(self):
        return self.filter(state__in=StepState.LAUNCHED)

    def waiting(self):
        return self.filter(state=StepState.WAITING)


class QueueRequest(models.Model):
    """One step of a queue: one entry of `requests`, run as one Job."""

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField(help_text="Index in the submitted requests list.")
    name = models.CharField(max_length=50)
    target = models.CharField(max_length=32, db_index=True)
    type = models.CharField(max_length=40)
    streaming = models.BooleanField(default=False)
    params = models.JSONField(help_text="The request as submitted.")
    interval = models.CharField(max_length=8, blank=True)
    image = models.CharField(max_length=255, blank=True)
    job_name = models.CharField(max_length=63, unique=True)
    telemetry_id = models.CharField(max_length=100)
    kafka_topic = models.CharField(max_length=249, blank=True)
    collection_name = models.CharField(max_length=128, blank=True)
    collection_inputs = models.JSONField(default=list, blank=True)
    collection_output = models.CharField(max_length=128, blank=True)
    model_output = models.CharField(max_length=128, blank=True)
    graph_collection = models.CharField(max_length=128, blank=True)
    inference_interval = models.CharField(max_length=8, blank=True)
    source = models.CharField(max_length=128, blank=True)

    state = models.CharField(max_length=16, choices=StepState.choices, default=StepState.WAITING, db_index=True)
    reported_status = models.CharField(max_length=32, blank=True, help_text="Last status the worker reported.")
    records_written = models.BigIntegerField(default=0)
    extra = models.JSONField(default=dict, blank=True, help_text="Last `extra` the worker reported (e.g. epoch, loss).")
    message = models.TextField(blank=True)
    launch_attempts = models.PositiveIntegerField(default=0, help_text="Launch attempts of this run (bounded budget).")
    next_launch_at = models.DateTimeField(
        null=True, blank=True,
        help_text="While launching: when the next attempt is due; reconcile re-sends the launch only after it.",
    )
    run = models.PositiveIntegerField(default=1, help_text="1 for the first run, +1 for each retry.")
    launcher_handle = models.JSONField(default=dict, blank=True)
    logs = models.TextField(blank=True, help_text="Tail of the step's logs, kept when it ends.")
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    drain_requested_at = models.DateTimeField(null=True, blank=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_progress_at = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = StepQuerySet.as_manager()

    class Meta:
        ordering = ["queue", "position"]
        verbose_name = "step"
        indexes = [
            # Reconcile reads the launched steps every pass: an index over the few live rows only.
            models.Index(fields=["state"], name="step_launched_state",
                         condition=models.Q(state__in=StepState.LAUNCHED)),
            # Logs still to keep of recently ended steps (reconcile's _capture_logs).
            models.Index(fields=["finished_at"], name="step_logs_to_capture",
                         condition=models.Q(logs="", launched_at__isnull=False)),
        ]
        constraints = [
            models.UniqueConstraint(fields=["queue", "name"], name="unique_step_name_per_queue"),
            models.UniqueConstraint(fields=["queue", "telemetry_id"], name="unique_telemetry_id_per_queue"),
        ]

    def __str__(self) -> str:
        return f"{self.queue.queue_id}/{self.name}"

    @property
    def number(self) -> int:
        return self.position + 1

    @property
    def is_terminal(self) -> bool:
        return self.state in StepState.TERMINAL

    @property
    def is_ready(self) -> bool:
        """Met for a *ready* edge: running, or already done successfully."""
        return self.state in (StepState.RUNNING, StepState.SUCCEEDED) or (
            self.state == StepState.STOPPING and self.started_at is not None
        )

    def transition(self, to: str, *, from_states=None, in_run: int | None = None, **fields) -> bool:
        """Compare-and-set state change; returns False if another actor moved the step first.

        `in_run` also requires the step to still be in that run (a retry since makes it a no-op).
        The orchestration changes state through `jobs.services.step_transition`, which also
        removes the workload of a step that ended (the domain knows nothing of workloads).
        """
        allowed = from_states if from_states is not None else [s for s in StepState.values if s != to]
        now = timezone.now()
        values = {"state": to, "state_changed_at": now, "updated_at": now, **fields}
        if to in StepState.TERMINAL:
            values.setdefault("finished_at", now)
            values.setdefault("next_launch_at", None)
        match = {"pk": self.pk, "state__in": allowed, **({"run": in_run} if in_run is not None else {})}
        # The change and what its receivers record (the mirror's outbox row) in one statement: in
        # autocommit (a launch's record) one round trip where BEGIN, UPDATE, record, COMMIT were four; in
        # a caller's transaction one where UPDATE, record were two (an advance: per step it cancels).
        changed = update_with_records([self], to, match, values)
        steps_changed([self], changed, to, values)
        return self.pk in changed

    def reads(self) -> list[str]:
        from queues.catalogue import TARGETS

        return [c for f in TARGETS[self.target].reads for c in _as_list(getattr(self, f))]

    def writes(self) -> list[str]:
        from queues.catalogue import TARGETS

        return [c for f in TARGETS[self.target].writes for c in _as_list(getattr(self, f))]


def update_with_records(steps, to: str, match: dict, values: dict) -> set[int]:
    """`execute_with_records` of the ORM's UPDATE of the rows matching `match` with `values`."""
    from django.db import connection
    from django.db.models.sql import UpdateQuery

    query = QueueRequest.objects.filter(**match).query.chain(UpdateQuery)
    query.add_update_values(values)
    update, params = query.get_compiler(connection.alias).as_sql()
    pk = connection.ops.quote_name(QueueRequest._meta.pk.column)
    return execute_with_records(f"{update} RETURNING {pk}", params, steps, to)


def execute_with_records(update: str, params: list, steps, to: str) -> set[int]:
    """Run `update` (an UPDATE of step rows … RETURNING their `id`, for the caller's `steps` going to state
    `to`) as one statement with the records the `step_state_writing` receivers return for each of
    `steps`, each written from its own step's row if it changed (a data-modifying CTE: both or
    neither). Returns the pks changed; `steps_changed` then announces them."""
    from django.db import connection

    from queues.signals import step_state_writing

    parts, params = [f"changed_all AS ({update})"], list(params)
    for step in steps:
        for _receiver, record in step_state_writing.send(sender=QueueRequest, step=step, state=to):
            if record:  # the receiver's statement reads `changed(id)`: here, this step's row if it changed
                parts.append(f"record_{len(parts)} AS (WITH changed AS (SELECT id FROM changed_all WHERE id = %s) "
                             f"{record[0]})")
                params.extend([step.pk, *record[1]])
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} SELECT id FROM changed_all", params)
        return {row[0] for row in cursor.fetchall()}


def steps_changed(steps, changed: set[int], to: str, values: dict) -> None:
    """For each of `steps` whose row `execute_with_records` changed: its fields as written, then
    `step_state_changed` once (its records were written with the change)."""
    from queues.signals import step_state_changed

    for step in steps:
        if step.pk in changed:
            previous = step.state
            for key, value in values.items():
                setattr(step, key, value)
            step_state_changed.send(sender=QueueRequest, step=step, previous=previous, state=to,
                                    written_with_change=True)


def _as_list(value) -> list[str]:
    return list(value) if isinstance(value, list) else [value] if value else []


class StepDependency(models.Model):
    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="edges")
    upstream = models.ForeignKey(QueueRequest, on_delete=models.CASCADE, related_name="downstream_edges")
    downstream = models.ForeignKey(QueueRequest, on_delete=models.CASCADE, related_name="upstream_edges")
    kind = models.CharField(max_length=8, choices=DependencyKind.choices)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        verbose_name = "dependency"
        verbose_name_plural = "dependencies"
        constraints = [models.UniqueConstraint(fields=["upstream", "downstream"], name="unique_step_edge")]
        ordering = ["downstream__position", "upstream__position"]

    def __str__(self) -> str:
        return f"{self.downstream.name} waits for {self.upstream.name} ({self.kind})"

    @property
    def is_met(self) -> bool:
        if self.kind == DependencyKind.SUCCESS:
            return self.upstream.state == StepState.SUCCEEDED
        return self.upstream.is_ready


class TelemetryEvent(models.Model):
    """A telemetry event from a worker, as received (DESIGN §6), deduplicated by `event_key`."""

    # Few indexes on purpose: this table takes every event at high rate (the composite index below
    # serves per-queue listings; step_id serves a step's page). No database-checked foreign keys
    # either (a trigger query per row): ingestion resolves queue and step under the queue's lock, and
    # the ORM still cascades a queue's deletion to its events (migration 0011).
    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False)
    step = models.ForeignKey(
        QueueRequest, null=True, blank=True, on_delete=models.CASCADE, related_name="events", db_constraint=False
    )
    event_key = models.CharField(max_length=64, unique=True, help_text="Hash of the event, for idempotent ingestion.")
    status = models.CharField(max_length=32)
    producer = models.CharField(max_length=100, blank=True)
    records_written = models.BigIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    payload = models.JSONField()
    source = models.CharField(max_length=16, default="http", help_text="http or kafka")
    sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    run = models.PositiveIntegerField(
        null=True, blank=True, help_text="The step's run it belongs to (sent by the worker, else the run current on arrival)."
    )
    # Plain progress reports of one step in one batch are stored as one row (jobs.telemetry_coalesce):
    # how many reports it stands for; 1 for every other event.
    coalesced = models.PositiveIntegerField(
        default=1, db_default=1, help_text="How many progress reports of one step in one batch this row stands for."
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["queue", "-received_at"])]

    def __str__(self) -> str:
        return f"{self.producer}: {self.status}"


# The audit trail and past step runs live in their own module (queues/history.py); imported here so
# Django registers them with the app.
from queues.history import AuditEntry, StepRun  # noqa: E402,F401
