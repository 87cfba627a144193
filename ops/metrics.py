"""Domain metrics for Prometheus (DESIGN §9).

Only `ops.receivers` calls the small functions below (`count_command`, `observe_reconcile`, …),
from the signals the working apps declare (queues, jobs, kafkabus, consumers): nobody imports ops.

Labels are always bounded: known values pass, anything else becomes "other" (never a queue_id or
a producer id). Free-form labels (outcome, reason) are normalised and capped per process at
`MAX_VALUES_PER_LABEL` distinct values.

Processes: counters, histograms and the lag gauge use prometheus_client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (web, Celery worker/beat and the Kafka consumers share one
directory per host or pod), so one scrape of the web's `/metrics` sees them all locally; in
Kubernetes each non-web pod exposes its directory with `python -m ops.metrics_server`.
Gauges that describe *state* (steps by state, queues by status, mirror backlog) are read from the
database at scrape time by `StateCollector`, so they are right whichever process changed the rows.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "streamforge"
OTHER = "other"
MAX_VALUES_PER_LABEL = 25

COMMAND_KINDS = frozenset({"start", "stop", "ping"})
TELEMETRY_STATUSES = frozenset(
    {"started", "loading", "progress", "interrupted", "error", "finished", "pong", "failed", "running"}
)
QUEUE_SOURCES = frozenset({"api", "admin", "kafka"})

QUEUES_STARTED = Counter(
    f"{PREFIX}_queues_started", "Queues created, by where the request came from.", ["source"]
)
QUEUES_FINISHED = Counter(
    f"{PREFIX}_queues_finished", "Queues that reached a terminal status, by that status.", ["outcome"]
)
COMMANDS = Counter(
    f"{PREFIX}_commands", "Commands received on queue-control (and the API), by kind and outcome.", ["kind", "outcome"]
)
TELEMETRY_EVENTS = Counter(
    f"{PREFIX}_telemetry_events", "Telemetry events ingested, by reported status and step target.", ["status", "target"]
)
DEAD_LETTERS = Counter(
    f"{PREFIX}_dead_letters", "Messages sent to a dead-letter topic, by source topic and reason class.", ["topic", "reason"]
)
STEP_LAUNCH_SECONDS = Histogram(
    f"{PREFIX}_step_launch_seconds",
    "Time from launching a step to its workload running, by target.",
    ["target"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
STEP_STOP_SECONDS = Histogram(
    f"{PREFIX}_step_stop_seconds",
    "Time from a stop request to the step being stopped.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 45, 60, 120, 300),
)
RECONCILE_SECONDS = Histogram(
    f"{PREFIX}_reconcile_seconds",
    "Duration of one scheduler/reconcile pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WORKLOAD_WATCH = Counter(
    f"{PREFIX}_workload_watch",
    "Workload watcher: watch events applied, lists, watches expired (410, listed again), broken or silent (resumed).",
    ["kind", "outcome"],
)
# livesum: each consumer process reports the lag of the partitions it owns; the topic's lag is the sum.
KAFKA_CONSUMER_LAG = Gauge(
    f"{PREFIX}_kafka_consumer_lag",
    "Messages not yet consumed by the manager's consumer group, by topic.",
    ["topic"],
    multiprocess_mode="livesum",
)

_seen: dict[tuple[str, str], set[str]] = defaultdict(set)
_seen_lock = threading.Lock()


def _normalise(value: object) -> str:
    text = re.sub(r"[^a-z0-9_.-]+", "_", str(value or "").strip().lower()).strip("_")
    return text[:40] or "unknown"


def bounded(metric: str, label: str, value: object, allowed: Iterable[str] | None = None) -> str:
    """A label value that cannot grow without bound: known values, or at most N distinct others."""
    text = _normalise(value)
    if allowed is not None:
        return text if text in allowed else OTHER
    with _seen_lock:
        seen = _seen[(metric, label)]
        if text in seen:
            return text
        if len(seen) >= MAX_VALUES_PER_LABEL:
            return OTHER
        seen.add(text)
        return text


def _targets() -> frozenset[str]:
    from queues.catalogue import TARGETS

    return frozenset(TARGETS)


def _topics() -> frozenset[str]:
    from django.conf import settings

    names = ("QUEUE_CONTROL_TOPIC", "QUEUE_EVENTS_TOPIC", "QUEUE_CONTROL_DLQ_TOPIC", "QUEUE_EVENTS_DLQ_TOPIC")
    return frozenset(_normalise(getattr(settings, name, "")) for name in names)


# ---------------------------------------------------------------- functions other modules call


def count_queue_started(source: str) -> None:
    QUEUES_STARTED.labels(source=bounded("queues_started", "source", source, QUEUE_SOURCES)).inc()


def count_queue_finished(outcome: str) -> None:
    from queues.models import QueueStatus

    QUEUES_FINISHED.labels(outcome=bounded("queues_finished", "outcome", outcome, QueueStatus.values)).inc()


def count_command(kind: str, outcome: str) -> None:
    COMMANDS.labels(
        kind=bounded("commands", "kind", kind, COMMAND_KINDS),
        outcome=bounded("commands", "outcome", outcome),
    ).inc()


def count_telemetry(status: str, target: str, amount: int = 1) -> None:
    TELEMETRY_EVENTS.labels(
        status=bounded("telemetry", "status", status, TELEMETRY_STATUSES),
        target=bounded("telemetry", "target", target, _targets()),
    ).inc(amount)


def count_dead_letter(topic: str, reason: str) -> None:
    DEAD_LETTERS.labels(
        topic=bounded("dead_letters", "topic", topic, _topics()),
        reason=bounded("dead_letters", "reason", reason),
    ).inc()


def observe_launch(target: str, seconds: float) -> None:
    STEP_LAUNCH_SECONDS.labels(target=bounded("launch", "target", target, _targets())).observe(max(seconds, 0.0))


def observe_stop(seconds: float) -> None:
    STEP_STOP_SECONDS.observe(max(seconds, 0.0))


def observe_reconcile(seconds: float) -> None:
    RECONCILE_SECONDS.observe(max(seconds, 0.0))


def count_workload_watch(kind: str, outcome: str, amount: int = 1) -> None:
    WORKLOAD_WATCH.labels(kind=bounded("workload_watch", "kind", kind, {"jobs", "pods"}),
                          outcome=bounded("workload_watch", "outcome", outcome,
                                          {"event", "list", "expired", "broken", "silent"})).inc(amount)


def set_consumer_lag(topic: str, lag: float) -> None:
    KAFKA_CONSUMER_LAG.labels(topic=bounded("consumer_lag", "topic", topic, _topics())).set(max(lag, 0))


# ---------------------------------------------------------------- state read at scrape time


class StateCollector(Collector):
    """Steps by state and target, queues by status, mirror backlog: read from the database per scrape.

    One GROUP BY per table; failures are reported by `streamforge_state_metrics_up` = 0 instead of
    breaking the whole scrape.
    """

    def collect(self):
        from django.db.models import Count

        from queues.models import Queue, QueueRequest, QueueStatus, StepState

        up = GaugeMetricFamily(f"{PREFIX}_state_metrics_up", "1 when the database-backed metrics could be read.")
        steps = GaugeMetricFamily(f"{PREFIX}_steps", "Steps (Jobs) by state and target.", labels=["state", "target"])
        queues = GaugeMetricFamily(f"{PREFIX}_queues", "Queues by status.", labels=["status"])
        try:
            step_rows = list(QueueRequest.objects.order_by().values_list("state", "target").annotate(n=Count("id")))
            queue_rows = dict(Queue.objects.order_by().values_list("status").annotate(n=Count("id")))
        except Exception:  # noqa: BLE001 — a scrape must answer even when the database is away
            logger.warning("state metrics unavailable", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        targets = _targets()
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for target in targets:  # zeros make rate()/absent() queries behave
            for state in StepState.values:
                counts[(state, target)] = 0
        for state, target, n in step_rows:
            counts[(bounded("steps", "state", state, StepState.values), target if target in targets else OTHER)] += n
        for (state, target), n in sorted(counts.items()):
            steps.add_metric([state, target], n)
        for status in QueueStatus.values:
            queues.add_metric([status], queue_rows.get(status, 0))
        up.add_metric([], 1)
        yield up
        yield steps
        yield queues
        backlog = mirror_backlog()
        if backlog is not None:
            gauge = GaugeMetricFamily(f"{PREFIX}_mirror_backlog", "Changes waiting to be written to ArangoDB.")
            gauge.add_metric([], backlog)
            yield gauge


def mirror_backlog() -> float | None:
    """The ArangoDB mirror's backlog from `mirror.status()`, or None when the mirror is off or absent."""
    from django.conf import settings

    if not getattr(settings, "ARANGO_ENABLED", False):
        return None
    try:
        import mirror
    except ImportError:
        return None
    status_fn = getattr(mirror, "status", None)
    if status_fn is None:
        return None
    try:
        status = status_fn()
    except Exception:  # noqa: BLE001
        logger.warning("mirror status unavailable", exc_info=True)
        return None
    backlog = status.get("backlog") if isinstance(status, dict) else getattr(status, "backlog", None)
    return float(backlog) if isinstance(backlog, (int, float)) else None


# Kept out of the default registry: only the web's /metrics serves it (once, not per process).
STATE_REGISTRY = CollectorRegistry(auto_describe=False)
STATE_REGISTRY.register(StateCollector())
