"""Submitting a queue: validate the payload, create the queue with its steps and edges, and take its
first advance — all in one transaction, shared by the API, the admin and the Kafka consumer.

The first advance happens here rather than in a `queue_advance` task sent on commit: the transaction
holds the queue (a row no one else can see before the commit) and every step of it (just inserted),
so the advance needs neither the lock nor the read a task must make, and the ready steps' launch is
the task sent on commit — one Celery hop and four round trips fewer from the request to the first
Jobs (issue #12, launch_create_to_ready_jobs). What the advance decides is `jobs.advance`'s rule,
the same function every later advance applies.
"""
from __future__ import annotations

import logging

from django.db import IntegrityError, transaction

from jobs.advance import advance_held
from queues import naming
from queues.contract import PayloadError, PipelineSpec, canonical_json, parse_payload
from queues.history import AuditAction, AuditResult, Origin, audit_record, errors_summary
from queues.models import Queue, QueueRequest, StepDependency

logger = logging.getLogger(__name__)


class QueueConflict(Exception):
    """A queue with this queue_id exists with a different payload."""

    def __init__(self, queue_id: str):
        super().__init__(f"Queue {queue_id!r} already exists with a different payload.")
        self.queue_id = queue_id


def queue_create(*, payload: dict, queue_id: str | None = None, user=None, source: str = "api",
                 origin: Origin | None = None) -> tuple[Queue, bool]:
    """Validate and create a queue with its steps and edges, and launch its ready steps on commit;
    returns (queue, created).

    Idempotent on a client-supplied queue_id: the same payload returns the existing queue,
    another payload raises QueueConflict. Raises contract.PayloadError on invalid input.
    Every outcome is audited (queues.history), the refusals too.
    """
    origin = origin or Origin(source=source, user=user)
    requested = queue_id if isinstance(queue_id, str) else (payload.get("queue_id") if isinstance(payload, dict) else None)
    requested = requested if isinstance(requested, str) else ""
    try:
        spec = parse_payload(payload, queue_id=queue_id, user=origin.user)
        if spec.queue_id:
            existing = _existing_same_payload(spec)
            if existing is not None:
                audit_record(origin=origin, action=AuditAction.START, result=AuditResult.DUPLICATE, queue=existing,
                             reason="Submitted before with the same payload; nothing new created.")
                return existing, False
        try:
            with transaction.atomic():
                queue, steps = _create_from_spec(spec, payload=payload, user=origin.user, source=origin.source)
                audit_record(origin=origin, action=AuditAction.START, result=AuditResult.ACCEPTED, queue=queue,
                             detail={"steps": len(spec.steps)})
                advance_held(queue, {step.pk: step for step in steps}, _upstreams(spec, steps))
        except IntegrityError:
            # Two submissions of the same client queue_id raced; the loser resolves like a resubmission.
            existing = _existing_same_payload(spec) if spec.queue_id else None
            if existing is None:
                raise
            audit_record(origin=origin, action=AuditAction.START, result=AuditResult.DUPLICATE, queue=existing,
                         reason="Submitted concurrently with the same payload; nothing new created.")
            return existing, False
    except PayloadError as exc:
        audit_record(origin=origin, action=AuditAction.START, result=AuditResult.REJECTED, queue_ref=requested,
                     reason=errors_summary(exc.errors))
        raise
    except QueueConflict as exc:
        audit_record(origin=origin, action=AuditAction.START, result=AuditResult.CONFLICT,
                     queue=Queue.objects.filter(queue_id=exc.queue_id).first(), queue_ref=exc.queue_id, reason=str(exc))
        raise
    logger.info("queue created", extra={"queue_id": queue.queue_id, "steps": len(spec.steps), "source": origin.source})
    return queue, True


def _existing_same_payload(spec: PipelineSpec) -> Queue | None:
    existing = Queue.objects.filter(queue_id=spec.queue_id).first()
    if existing is None:
        return None
    if canonical_json(existing.canonical_payload) != canonical_json(spec.canonical):
        raise QueueConflict(spec.queue_id)
    return existing


def _upstreams(spec: PipelineSpec, steps: list[QueueRequest]) -> dict[int, list]:
    """Each created step's upstream edges as (upstream step, kind) in upstream position order, as
    `jobs.advance` reads them from the database."""
    upstreams: dict[int, list] = {step.pk: [] for step in steps}
    for edge in sorted(spec.edges, key=lambda edge: edge.upstream):
        upstreams[steps[edge.downstream].pk].append((steps[edge.upstream], edge.kind))
    return upstreams


def _create_from_spec(spec: PipelineSpec, *, payload: dict, user, source: str) -> tuple[Queue, list[QueueRequest]]:
    queue_id = spec.queue_id or naming.generate_queue_id(spec.symbol, spec.steps[0].type, spec.start)
    queue = Queue.objects.create(
        queue_id=queue_id,
        symbol=spec.symbol,
        time_range_start=spec.start,
        time_range_end=spec.end,
        payload=payload,
        canonical_payload=spec.canonical,
        warnings=spec.warnings,
        submitted_by=user if getattr(user, "is_authenticated", False) else None,
        source=source,
    )
    used_ids: set[str] = set()
    steps = []
    for step in spec.steps:
        telemetry_id = naming.telemetry_producer_id(step.target, step.type)
        if telemetry_id in used_ids:
            telemetry_id = naming.telemetry_producer_id(step.target, f"{step.type}-{step.number}")
        used_ids.add(telemetry_id)
        steps.append(
            QueueRequest(
                queue=queue,
                position=step.index,
                name=step.name,
                target=step.target,
                type=step.type,
                streaming=step.streaming,
                params=step.request,
                interval=step.interval or "",
                image=step.image or "",
                job_name=naming.job_name(queue_id, step.target, step.number),
                telemetry_id=telemetry_id,
                kafka_topic=spec.topic_for(step, queue_id) or "",
                collection_name=step.collection_name or "",
                collection_inputs=step.collection_inputs,
                collection_output=step.collection_output or "",
                model_output=step.model_output or "",
                graph_collection=step.graph_collection or "",
                inference_interval=step.inference_interval or "",
                source=step.source or "",
            )
        )
    created = QueueRequest.objects.bulk_create(steps)
    StepDependency.objects.bulk_create(
        StepDependency(
            queue=queue,
            upstream=created[edge.upstream],
            downstream=created[edge.downstream],
            kind=edge.kind,
            reason="; ".join(edge.reasons),
        )
        for edge in spec.edges
    )
    return queue, created
