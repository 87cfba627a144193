"""The queue page's live state, polled as JSON: the queue, its steps (cells, DAG nodes, timeline bars) and edges.

Built from two queries (steps, edges) whatever the queue's size, and a third for the ended runs of its
retried steps when it has any; the page renders the same cells on load.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.urls import reverse
from django.utils import timezone
from django.utils.html import conditional_escape

from console.admin import display, history
from console.admin.progress import QueueCounts, step_fractions
from queues.graph import Edge, topological_order
from queues.history import StepRun
from queues.models import DependencyKind, Queue, QueueRequest, StepDependency, StepState


@dataclass
class QueueView:
    """A queue's steps in run order, its edges and what the console derives from them."""

    queue: Queue
    steps: list[QueueRequest]
    edges: list[StepDependency]
    info: dict[int, dict]  # per step id: fraction, waiting_for, past_runs
    counts: QueueCounts

    @classmethod
    def load(cls, queue: Queue) -> QueueView:
        # Through the queue's managers: each step and edge knows its queue without a query of its own.
        steps = list(queue.steps.order_by("position"))
        edges = list(queue.edges.order_by("pk"))
        by_id = {step.pk: step for step in steps}
        for edge in edges:  # and its two steps: the edges table and its `str` read them
            edge.upstream, edge.downstream = by_id[edge.upstream_id], by_id[edge.downstream_id]
        index = {step.pk: i for i, step in enumerate(steps)}
        # Listed in the order they run (upstreams first), not in payload order.
        graph_edges = [Edge(index[e.upstream_id], index[e.downstream_id], e.kind, []) for e in edges]
        steps = [steps[i] for i in topological_order(len(steps), graph_edges)]
        fractions = step_fractions(steps, edges)
        info = {step.pk: {"fraction": fractions.get(step.pk), "waiting_for": [], "past_runs": []} for step in steps}
        if any(step.run > 1 for step in steps):  # a retried step: how its earlier runs went, for the timeline
            for past in StepRun.objects.filter(step__queue=queue).order_by("step_id", "run").values(*_PAST_RUN):
                info[past.pop("step_id")]["past_runs"].append(past)
        for edge in edges:
            if not edge_met(edge, edge.upstream, edge.downstream):
                info[edge.downstream_id]["waiting_for"].append((edge.upstream.name, _wording(edge.kind)))
        return cls(queue, steps, edges, info, QueueCounts.of(step.state for step in steps))

    def message(self) -> str:
        """The queue's message, else why it ended."""
        return self.queue.message or self.last_failure()

    def last_failure(self) -> str:
        """The last failed or stopped step's message, with the step's name ("" when none has one)."""
        ended = [s for s in self.steps if s.state in (*StepState.FAILED_STATES, StepState.STOPPED) and s.message]
        if not ended:
            return ""
        last = max(ended, key=lambda s: s.state_changed_at)
        return f"{last.name}: {last.message}"


_PAST_TIMES = ("launched_at", "started_at", "finished_at", "retried_at")
_PAST_RUN = ("step_id", "run", "state", *_PAST_TIMES)


def _wording(kind: str) -> str:
    return "to be running" if kind == DependencyKind.READY else "to succeed"


def edge_met(edge: StepDependency, upstream: QueueRequest, downstream: QueueRequest) -> bool:
    """Met now, or met when the downstream was launched (a later stop of the upstream does not undo that)."""
    if downstream.launched_at is not None:
        return True
    if edge.kind == DependencyKind.SUCCESS:
        return upstream.state == StepState.SUCCEEDED
    return upstream.is_ready


def _when(value) -> str | None:
    return value.isoformat() if value else None


def queue_cells(view: QueueView) -> dict[str, str]:
    queue = view.queue
    return {
        "status": str(display.badge(queue.status)),
        "progress": str(display.queue_progress(view.counts)),
        "message": str(conditional_escape(view.message() or "—")),
        "started_at": display.when(queue.started_at) or "—",
        "finished_at": display.when(queue.finished_at) or "—",
        "stop_requested_at": display.when(queue.stop_requested_at) or "—",
        "duration": display.duration(display.span(queue.started_at or queue.created_at, queue.finished_at)),
    }


def step_can_stop(step: QueueRequest) -> bool:
    return not step.is_terminal and not step.stop_requested_at


def queue_can_stop(queue: Queue) -> bool:
    return queue.is_active and not queue.stop_requested_at


def queue_can_retry(queue: Queue, steps) -> bool:
    return any(step.state in StepState.RETRYABLE for step in steps)


def queue_live(queue: Queue) -> dict:
    """What the queue page needs to update itself: raw fields, the cells the page rendered, nodes, edges, bars."""
    view = QueueView.load(queue)
    audit = history.queue_audit(queue)
    return {
        "queue_id": queue.queue_id,
        "status": queue.status,
        "active": queue.is_active,
        "message": view.message(),
        "now": timezone.now().isoformat(),
        "created_at": _when(queue.created_at),
        "started_at": _when(queue.started_at),
        "finished_at": _when(queue.finished_at),
        "counts": view.counts.__dict__,
        "can_stop": queue_can_stop(queue),
        "can_retry": queue_can_retry(queue, view.steps),
        "cells": {**queue_cells(view), "history": str(history.audit_table(audit))},
        "history": history.audit_rows(audit),
        "steps": [_step(step, view.info[step.pk]) for step in view.steps],
        "edges": [
            {
                "upstream": edge.upstream_id,
                "downstream": edge.downstream_id,
                "kind": edge.kind,
                "reason": edge.reason,
                "met": edge_met(edge, edge.upstream, edge.downstream),
            }
            for edge in view.edges
        ],
    }


def _step(step: QueueRequest, info: dict) -> dict:
    fraction = info["fraction"]
    return {
        "id": step.pk,
        "name": step.name,
        "target": step.target,
        "type": step.type,
        "streaming": step.streaming,
        "state": step.state,
        "reported_status": step.reported_status,
        "records_written": step.records_written,
        "fraction": fraction,
        "waiting_for": [name for name, _ in info["waiting_for"]],
        "extra": step.extra,
        "message": step.message,
        "run": step.run,
        "job_name": step.job_name,
        "url": reverse("admin:queues_queuerequest_change", args=[step.pk]),
        "created_at": _when(step.created_at),
        "launched_at": _when(step.launched_at),
        "started_at": _when(step.started_at),
        "finished_at": _when(step.finished_at),
        "times": {k: display.when(getattr(step, k)) for k in ("launched_at", "started_at", "finished_at")},
        # Its ended runs (a retried step), oldest first: the timeline draws them before the current run.
        "past_runs": [{**past, **{k: _when(past[k]) for k in _PAST_TIMES}} for past in info["past_runs"]],
        "can_stop": step_can_stop(step),
        "cells": {name: str(render(step, info)) for name, render in display.STEP_CELLS.items()},
    }

