"""Reconcile keeps the log tails of ended steps within one interval per pass (issue #14, R1k).

Found by `make chaos` R1k (seed 1814): steps ended by their workers' `finished` telemetry all wait for
reconcile to keep their log tail; a pass read up to 50 of them (a pod LIST and a log read each) while
holding the reconcile lock, ran into the task's time limit and was killed — reconcile then acted
every ~30 s instead of every interval, and 100 queues took minutes longer to end.
"""
from __future__ import annotations

import time as real_time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import scheduler
from queues.models import QueueRequest, StepState

pytestmark = pytest.mark.django_db


class _Clock:
    """time for jobs.scheduler: monotonic() moves only when the launcher reads a log."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(real_time, name)


def test_a_pass_keeps_log_tails_for_at_most_one_interval_and_later_passes_keep_the_rest(
        make_queue, historical_payload, settings, monkeypatch):
    """R1k: each log read costs a second here; with a 2 s interval a pass keeps 2 or 3 tails, not all
    of them, and the following passes keep the others (none lost, none read twice)."""
    settings.RECONCILE_INTERVAL_SECONDS = 2.0
    clock = _Clock()
    reads: list[int] = []

    def read_log(step, launcher):
        reads.append(step.pk)
        clock.now += 1.0
        return f"log of {step.name}"

    monkeypatch.setattr(scheduler, "time", clock)
    monkeypatch.setattr(scheduler, "_safe_logs", read_log)
    ended = timezone.now() - timedelta(seconds=5)
    pks = []
    for _ in range(2):
        queue = make_queue(historical_payload)
        pks += list(queue.steps.values_list("pk", flat=True))
    QueueRequest.objects.filter(pk__in=pks).update(state=StepState.SUCCEEDED, finished_at=ended, launched_at=ended,
                                                   logs="")
    assert len(pks) >= 8

    scheduler.reconcile()
    first = len(reads)
    assert 1 <= first <= 3, reads

    for _ in range(len(pks)):
        if not QueueRequest.objects.filter(pk__in=pks, logs="").exists():
            break
        scheduler.reconcile()
    assert sorted(reads) == sorted(pks)  # every tail kept, each read once
    assert not QueueRequest.objects.filter(pk__in=pks, logs="").exists()
