"""Signal receivers that turn domain changes into metrics, so callers need no metrics code.

- a Queue row created        → streamforge_queues_started_total{source} (after commit)
- queue_status_changed       → streamforge_queues_finished_total{outcome} on entering a terminal status
- step_state_changed         → launch latency (launched_at → running) and stop latency
                               (stop_requested_at → terminal)
All are recorded when the transaction commits, so a rolled-back change is never counted.

The apps that do the work declare their own signals (jobs/signals.py, kafkabus/signals.py,
consumers/signals.py) and never import ops: it listens, nobody calls it.
"""
from __future__ import annotations

import logging

from django.db import transaction
from django.db.models.signals import post_save
from django.utils import timezone

from ops import metrics

logger = logging.getLogger(__name__)


def on_queue_saved(sender, instance, created, raw=False, **kwargs) -> None:
    if created and not raw:
        source = instance.source
        transaction.on_commit(lambda: metrics.count_queue_started(source))


def on_queue_status_changed(sender, queue, previous, status, **kwargs) -> None:
    from queues.models import QueueStatus

    if status in QueueStatus.TERMINAL and previous not in QueueStatus.TERMINAL:
        # On commit: a transition rolled back (or retried after a conflict) must not count.
        transaction.on_commit(lambda: metrics.count_queue_finished(status))


def on_step_state_changed(sender, step, previous, state, **kwargs) -> None:
    from queues.models import StepState

    now = timezone.now()
    # Recorded on commit (values taken now): a rolled-back transition leaves no trace in the metrics.
    # Launch latency: the first time a launched step is seen running.
    if state == StepState.RUNNING and previous in (StepState.LAUNCHING, StepState.PENDING) and step.launched_at:
        target, seconds = step.target, ((step.started_at or now) - step.launched_at).total_seconds()
        transaction.on_commit(lambda: metrics.observe_launch(target, seconds))
    # Stop latency: a stop request that ended the step.
    if state in StepState.TERMINAL and previous not in StepState.TERMINAL and step.stop_requested_at:
        seconds = ((step.finished_at or now) - step.stop_requested_at).total_seconds()
        transaction.on_commit(lambda: metrics.observe_stop(seconds))


def on_reconcile_finished(sender, seconds, **kwargs) -> None:
    metrics.observe_reconcile(seconds)


def on_workload_watch_counted(sender, kind, outcome, count, **kwargs) -> None:
    metrics.count_workload_watch(kind, outcome, count)


def on_telemetry_counted(sender, status, target, count, **kwargs) -> None:
    metrics.count_telemetry(status, target, count)


def on_command_handled(sender, command, outcome, **kwargs) -> None:
    metrics.count_command(command, outcome)


def on_consumer_lag_measured(sender, topic, lag, **kwargs) -> None:
    metrics.set_consumer_lag(topic, lag)


def on_dead_lettered(sender, topic, reason, **kwargs) -> None:
    metrics.count_dead_letter(topic, reason)


def connect() -> None:
    from consumers.signals import command_handled
    from jobs import signals as jobs_signals
    from kafkabus import signals as kafkabus_signals
    from queues.models import Queue
    from queues.signals import queue_status_changed, step_state_changed

    post_save.connect(on_queue_saved, sender=Queue, dispatch_uid="ops.metrics.queue_saved")
    queue_status_changed.connect(on_queue_status_changed, dispatch_uid="ops.metrics.queue_status")
    step_state_changed.connect(on_step_state_changed, dispatch_uid="ops.metrics.step_state")
    jobs_signals.reconcile_finished.connect(on_reconcile_finished, dispatch_uid="ops.metrics.reconcile")
    jobs_signals.telemetry_counted.connect(on_telemetry_counted, dispatch_uid="ops.metrics.telemetry")
    jobs_signals.workload_watch_counted.connect(on_workload_watch_counted, dispatch_uid="ops.metrics.workload_watch")
    command_handled.connect(on_command_handled, dispatch_uid="ops.metrics.command")
    kafkabus_signals.consumer_lag_measured.connect(on_consumer_lag_measured, dispatch_uid="ops.metrics.consumer_lag")
    kafkabus_signals.dead_lettered.connect(on_dead_lettered, dispatch_uid="ops.metrics.dead_letter")
