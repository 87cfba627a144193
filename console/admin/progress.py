"""How far a queue and each of its steps are: what the console's bars and counts show.

A step's fraction is, in order of preference: the worker's own progress (`extra.progress` as 0–1 or a
percentage, or `extra.epoch` of `extra.epochs`); for a topic consumer, the records it wrote against what
the producers of its topic wrote; 1 once succeeded. Otherwise it is unknown (None): a running streaming
step has no end, so the console shows it as healthy-and-running rather than as 0 %.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from queues.catalogue import TARGETS
from queues.models import StepState


@dataclass(frozen=True)
class QueueCounts:
    total: int
    running: int  # launched and not ended: launching, pending, running, stopping
    waiting: int
    succeeded: int
    failed: int  # failed or lost
    stopped: int

    @classmethod
    def of(cls, states) -> QueueCounts:
        counts = Counter(states)
        return cls(
            total=sum(counts.values()),
            running=sum(counts[s] for s in StepState.LAUNCHED),
            waiting=counts[StepState.WAITING],
            succeeded=counts[StepState.SUCCEEDED],
            failed=sum(counts[s] for s in StepState.FAILED_STATES),
            stopped=counts[StepState.STOPPED],
        )


def _own_fraction(extra) -> float | None:
    if not isinstance(extra, dict):
        return None
    value = extra.get("progress")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return min(value / 100 if value > 1 else float(value), 1.0)
    epoch, epochs = extra.get("epoch"), extra.get("epochs")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, epochs)) and epochs > 0:
        return min(max(epoch, 0) / epochs, 1.0)
    return None


def step_fractions(steps, edges) -> dict[int, float | None]:
    """Fraction done per step id (None when unknown). `edges` are StepDependency rows of the same queue."""
    by_id = {step.pk: step for step in steps}
    producers: dict[int, list] = {}
    for edge in edges:
        upstream = by_id.get(edge.upstream_id)
        if upstream is not None and TARGETS.get(upstream.target) and TARGETS[upstream.target].topic_role == "consumer" \
                and "topic " in edge.reason and edge.downstream_id in by_id:
            producers.setdefault(upstream.pk, []).append(by_id[edge.downstream_id])
    fractions: dict[int, float | None] = {}
    for step in steps:
        fraction = _own_fraction(step.extra)
        if fraction is None and step.pk in producers:
            written = sum(p.records_written for p in producers[step.pk])
            if written:
                fraction = min(step.records_written / written, 1.0)
        if step.state == StepState.SUCCEEDED:
            fraction = 1.0
        fractions[step.pk] = fraction
    return fractions
