"""queue-control: `start`, `stop`, `ping` from other systems (DESIGN §6), acknowledged on queue-events.

`handle_command(data)` checks the envelope (types, bounds: one bad field rejects that command
alone, dead-lettered with the field named), runs the command through the same services as the
API and returns the Ack to publish.

Exactly once by `command_id` (kafkabus.claims): the id is claimed first in a transaction of its
own; only the winner acts, a concurrent or later delivery answers `duplicate: true` with the
recorded outcome. The outcome is written on the claim in the action's transaction; a permanent
failure is recorded as a rejection (a replay answers the same); a connectivity failure releases
the claim so the retried delivery can act. Commands without `command_id` are at-least-once. The
manager's own published commands (`origin` = queue-manager) are skipped by the batch handler.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from consumers.events import parse
from consumers.signals import command_handled
from jobs.telemetry_input import InvalidEvent, check_json, parse_time
from kafkabus.batches import is_transient
from kafkabus.claims import (PROCESSING, ClaimLost, command_claim, command_claim_get, command_claim_release,
                             command_outcome_record)
from kafkabus.config import ORIGIN, is_own_message
from kafkabus.deadletter import send_dead_letters
from kafkabus.publisher import Outgoing, encode, send_confirmed
from queues.contract import PayloadError
from queues.history import AuditAction, AuditResult, Origin, audit_record
from queues.models import Queue
from jobs.services import queue_stop, step_stop
from jobs.submission import QueueConflict, queue_create

logger = logging.getLogger(__name__)

COMMANDS = ("start", "stop", "ping")
ENVELOPE_KEYS = {"command", "command_id", "timestamp", "queue_id", "origin", "payload"}


@dataclass
class Ack:
    command: str | None
    command_id: str | None
    status: str  # accepted | rejected
    errors: dict = field(default_factory=dict)
    queue_id: str | None = None
    created: bool | None = None
    duplicate: bool = False
    dead_letter: str = ""  # set when the message itself is at fault (malformed) or its handling failed

    @property
    def dead_letter_reason(self) -> str:
        """Unknown commands also go to the dead-letter topic: nobody may be waiting for that ack."""
        if self.dead_letter:
            return self.dead_letter
        if self.status == "rejected" and "command" in self.errors:
            return f"unknown command: {self.errors['command'][0]}"
        return ""

    def as_event(self) -> dict:
        if self.command == "ping" and self.status == "accepted":
            event = {"event": "pong", "command": "ping", "command_id": self.command_id, "status": "accepted"}
        else:
            event = {
                "event": "ack", "command": self.command, "command_id": self.command_id, "status": self.status,
                "errors": self.errors, "queue_id": self.queue_id,
            }
            if self.created is not None:
                event["created"] = self.created
        if self.duplicate:
            event["duplicate"] = True
        return event


def handle_command(data: dict) -> Ack:
    """Validate and execute one command; raises only for lost connectivity (retry the batch)."""
    command = data.get("command")
    if command not in COMMANDS:
        ack = Ack(command if isinstance(command, str) else None, _plain_id(data), "rejected",
                  {"command": [f"must be one of {', '.join(COMMANDS)}, got {str(command)[:60]!r}"]})
        _count(ack)
        return ack
    try:
        command_id = _envelope(data)
    except InvalidEvent as exc:
        field_name = str(exc).split(":", 1)[0].removeprefix("invalid ")
        ack = Ack(command, _plain_id(data), "rejected", {field_name: [str(exc)]}, dead_letter=str(exc))
        _count(ack)
        return _refused(ack) if command in AUDITED else ack
    token = None
    if command_id is not None:
        token = command_claim(command_id=command_id, command=command)
        if token is None:
            return _duplicate(command, command_id)
    try:
        with transaction.atomic():
            ack = _execute(command, command_id, data)
            if token is not None:
                command_outcome_record(command_id=command_id, token=token, ack=ack)
    except ClaimLost:
        return _duplicate(command, command_id)  # taken over after the lease: the new owner acts
    except Exception as exc:
        if is_transient(exc):
            if token is not None:
                _release(command_id, token)
            raise
        # A bug, or the database refusing this input: the command is rejected for good.
        logger.exception("command %s failed", command)
        ack = Ack(command, command_id, "rejected", {"internal": [f"internal error: {type(exc).__name__}"]},
                  dead_letter=f"internal error: {type(exc).__name__}: {exc}"[:500])
        if token is not None:
            try:
                command_outcome_record(command_id=command_id, token=token, ack=ack)
            except ClaimLost:
                pass
        if command in AUDITED:
            _refused(ack)  # the action's own audit row was rolled back with it
    _count(ack)
    logger.info("command %s %s", command, ack.status,
                extra={"command_id": command_id, "queue_id": ack.queue_id, "errors": ack.errors})
    return ack


def _duplicate(command: str, command_id: str) -> Ack:
    """The ack for an id claimed before: the recorded outcome, or `processing` while its owner acts."""
    claim = command_claim_get(command_id=command_id)
    if claim is not None and claim.status != PROCESSING and claim.ack:  # while processing, ack names the owner
        ack = Ack(**{**_ack_fields(claim.ack), "duplicate": True})
    else:
        ack = Ack(command, command_id, claim.status if claim is not None else "processing", duplicate=True)
    _count(ack, outcome="duplicate")
    if command in AUDITED:
        queue = Queue.objects.filter(queue_id=ack.queue_id).first() if ack.queue_id else None
        audit_record(origin=_origin(command_id), action=AUDITED[command], result=AuditResult.DUPLICATE, queue=queue,
                     queue_ref=ack.queue_id or "", reason=f"command_id handled before (first outcome: {ack.status}).")
    return ack


# The commands that change queues, audited (queues.history) with the command's id as "who".
AUDITED = {"start": AuditAction.START, "stop": AuditAction.STOP}


def _origin(command_id: str | None) -> Origin:
    return Origin(source="kafka", command_id=command_id or "")


def _refused(ack: Ack, *, queue=None, step_name: str = "", action: str | None = None) -> Ack:
    """Audit a command refused before it reached a service (the services audit their own refusals)."""
    reason = "; ".join(f"{key}: {' '.join(map(str, messages))}" for key, messages in ack.errors.items())
    audit_record(origin=_origin(ack.command_id), action=action or AUDITED[ack.command], result=AuditResult.REJECTED,
                 queue=queue, queue_ref=ack.queue_id or "", step_name=step_name, reason=reason)
    return ack


def _release(command_id: str, token) -> None:
    try:
        command_claim_release(command_id=command_id, token=token)
    except Exception as exc:  # the database is gone: the claim's lease lets a later delivery act
        logger.warning("could not release the claim on command %s: %s", command_id, exc)


def _plain_id(data: dict) -> str | None:
    """The command_id to echo in a rejection, when it is a plain string that can be echoed."""
    value = data.get("command_id")
    return value if isinstance(value, str) and 0 < len(value) <= MAX_COMMAND_ID and "\x00" not in value else None


MAX_COMMAND_ID = 200


def _envelope(data: dict) -> str | None:
    """Check the whole message's bounds and the envelope's fields; returns the command_id (or None)."""
    check_json(data)  # non-finite numbers, NUL, lone surrogates, long strings, deep nesting — anywhere
    parse_time(data.get("timestamp"), "timestamp")
    for key in ("queue_id", "target", "telemetry_id"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidEvent(f"invalid {key}: must be a string, got {type(data[key]).__name__}")
    command_id = data.get("command_id")
    if command_id in (None, ""):
        return None
    if isinstance(command_id, int) and not isinstance(command_id, bool):
        command_id = str(command_id)
    if not isinstance(command_id, str):
        raise InvalidEvent(f"invalid command_id: must be a string, got {type(command_id).__name__}")
    if len(command_id) > MAX_COMMAND_ID:
        raise InvalidEvent(f"invalid command_id: longer than {MAX_COMMAND_ID} characters")
    return command_id


def _ack_fields(event: dict) -> dict:
    return {
        "command": event.get("command"), "command_id": event.get("command_id"), "status": event.get("status", "accepted"),
        "errors": event.get("errors") or {}, "queue_id": event.get("queue_id"), "created": event.get("created"),
    }


def _execute(command: str, command_id: str | None, data: dict) -> Ack:
    if command == "ping":
        return Ack("ping", command_id, "accepted")
    if command == "start":
        return _start(command_id, data)
    return _stop(command_id, data)


def _start(command_id: str | None, data: dict) -> Ack:
    payload = data.get("payload")
    if payload is None:
        payload = {k: v for k, v in data.items() if k not in ENVELOPE_KEYS}
    if not isinstance(payload, dict):
        return _refused(Ack("start", command_id, "rejected", {"payload": ["must be a JSON object"]}))
    queue_id = data.get("queue_id")
    if queue_id is not None and not isinstance(queue_id, str):
        return _refused(Ack("start", command_id, "rejected", {"queue_id": ["must be a string"]}))
    try:
        queue, created = queue_create(payload=payload, queue_id=queue_id or None, origin=_origin(command_id))
    except PayloadError as exc:
        return Ack("start", command_id, "rejected", exc.errors, queue_id=queue_id)
    except QueueConflict as exc:
        return Ack("start", command_id, "rejected", {"queue_id": [str(exc)]}, queue_id=queue_id)
    return Ack("start", command_id, "accepted", queue_id=queue.queue_id, created=created)


def _stop(command_id: str | None, data: dict) -> Ack:
    queue_id = data.get("queue_id")
    if not isinstance(queue_id, str) or not queue_id:
        return _refused(Ack("stop", command_id, "rejected", {"queue_id": ["required"]}))
    queue = Queue.objects.filter(queue_id=queue_id).first()
    if queue is None:
        return _refused(Ack("stop", command_id, "rejected", {"queue_id": [f"unknown queue {queue_id!r}"]}, queue_id=queue_id))
    reason = f"Stop command{' ' + command_id if command_id else ''} from Kafka."
    target, telemetry_id = data.get("target"), data.get("telemetry_id")  # strings (checked by _envelope)
    if not target and not telemetry_id:
        queue_stop(queue=queue, reason=reason, origin=_origin(command_id))
        return Ack("stop", command_id, "accepted", queue_id=queue_id)
    steps = queue.steps.all()
    if telemetry_id:
        steps = steps.filter(telemetry_id=str(telemetry_id))
    if target:
        steps = steps.filter(target=str(target))
    steps = list(steps)
    if not steps:
        field_name = "telemetry_id" if telemetry_id else "target"
        return _refused(Ack("stop", command_id, "rejected", {field_name: ["no such step in this queue"]}, queue_id=queue_id),
                        queue=queue, step_name=str(telemetry_id or target), action=AuditAction.STEP_STOP)
    for step in steps:
        step_stop(step=step, reason=reason, origin=_origin(command_id))
    return Ack("stop", command_id, "accepted", queue_id=queue_id)


def _count(ack: Ack, outcome: str | None = None) -> None:
    command_handled.send(sender=handle_batch, command=ack.command or "unknown", outcome=outcome or ack.status)


def handle_batch(messages: list) -> list[Ack]:
    """Handle queue-control messages in order; publish acks and dead letters (confirmed)."""
    acks: list[Ack] = []
    outgoing: list[Outgoing] = []
    letters: list[tuple[object, str]] = []
    for message in messages:
        data, reason = parse(message.value())
        if data is None:
            letters.append((message, reason))
            continue
        if is_own_message(data):
            continue  # our own stop commands to workers: not for us (no loops)
        ack = handle_command(data)  # raises only for lost connectivity: the batch is retried, ids dedupe
        if ack.dead_letter_reason:
            letters.append((message, ack.dead_letter_reason))
        acks.append(ack)
        outgoing.append(Outgoing(settings.QUEUE_EVENTS_TOPIC, encode({**ack.as_event(), **_marker()}),
                                 (ack.queue_id or "").encode() or None))
    send_confirmed(outgoing)
    send_dead_letters(letters)
    return acks


def _marker() -> dict:
    return {"origin": ORIGIN, "timestamp": time.time()}


def run(*, until=None, on_stall=None, install_signals: bool = True, config: dict | None = None):
    """The consume_queue_control loop."""
    from kafkabus.consumer import BatchConsumer

    consumer = BatchConsumer(
        name="queue-control",
        topics=[settings.QUEUE_CONTROL_TOPIC],
        handle=handle_batch,
        batch_size=100,
        config=config,
        on_stall=on_stall,
        create_topics=[settings.QUEUE_CONTROL_TOPIC, settings.QUEUE_CONTROL_DLQ_TOPIC, settings.QUEUE_EVENTS_TOPIC],
    )
    if install_signals:
        consumer.install_signal_handlers()
    consumer.run(until=until)
    return consumer
