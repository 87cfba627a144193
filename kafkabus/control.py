"""queue-control: `start`, `stop`, `ping` from other systems (DESIGN §6), acknowledged on queue-events.

`handle_command(data)` runs a command through the same services as the API and returns the Ack
to publish. A `command_id` is remembered (ProcessedCommand, in the same transaction as the
action), so a redelivered command acts once, even after a restart; its ack is sent again with
`duplicate: true`. Commands without `command_id` are at-least-once. The manager's own published
commands (`origin` = queue-manager, command_id `qm-…`) are skipped by the batch handler.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, transaction

from kafkabus.config import ORIGIN, is_own_message
from kafkabus.deadletter import send_dead_letters
from kafkabus.events import parse
from kafkabus.models import ProcessedCommand
from kafkabus.publisher import Outgoing, encode, send_confirmed
from queues.contract import PayloadError
from queues.models import Queue
from queues.services import QueueConflict, queue_create, queue_stop, step_stop

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

    @property
    def dead_letter_reason(self) -> str:
        """Unknown commands also go to the dead-letter topic: nobody may be waiting for that ack."""
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
    """Validate and execute one command; never raises for bad input (database errors do raise)."""
    command = data.get("command")
    command_id = data.get("command_id")
    command_id = str(command_id)[:200] if command_id not in (None, "") else None
    if command not in COMMANDS:
        ack = Ack(command if isinstance(command, str) else None, command_id, "rejected",
                  {"command": [f"must be one of {', '.join(COMMANDS)}, got {command!r}"]})
        _count(ack)
        return ack
    with transaction.atomic():
        if command_id is not None:
            previous = ProcessedCommand.objects.filter(command_id=command_id).first()
            if previous is not None:
                ack = Ack(**{**_ack_fields(previous.ack), "duplicate": True})
                _count(ack, outcome="duplicate")
                return ack
        ack = _execute(command, command_id, data)
        if command_id is not None:
            try:
                with transaction.atomic():
                    ProcessedCommand.objects.create(
                        command_id=command_id, command=command, status=ack.status,
                        queue_id=ack.queue_id or "", ack=ack.as_event(),
                    )
            except IntegrityError:
                # Another consumer handled the same command_id concurrently: undo ours, report theirs.
                transaction.set_rollback(True)
                previous = ProcessedCommand.objects.filter(command_id=command_id).first()
                return Ack(**{**_ack_fields(previous.ack if previous else {}), "duplicate": True})
    _count(ack)
    logger.info("command %s %s", command, ack.status,
                extra={"command_id": command_id, "queue_id": ack.queue_id, "errors": ack.errors})
    return ack


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
        return Ack("start", command_id, "rejected", {"payload": ["must be a JSON object"]})
    queue_id = data.get("queue_id")
    if queue_id is not None and not isinstance(queue_id, str):
        return Ack("start", command_id, "rejected", {"queue_id": ["must be a string"]})
    try:
        queue, created = queue_create(payload=payload, queue_id=queue_id or None, source="kafka")
    except PayloadError as exc:
        return Ack("start", command_id, "rejected", exc.errors, queue_id=queue_id)
    except QueueConflict as exc:
        return Ack("start", command_id, "rejected", {"queue_id": [str(exc)]}, queue_id=queue_id)
    return Ack("start", command_id, "accepted", queue_id=queue.queue_id, created=created)


def _stop(command_id: str | None, data: dict) -> Ack:
    queue_id = data.get("queue_id")
    if not isinstance(queue_id, str) or not queue_id:
        return Ack("stop", command_id, "rejected", {"queue_id": ["required"]})
    queue = Queue.objects.filter(queue_id=queue_id).first()
    if queue is None:
        return Ack("stop", command_id, "rejected", {"queue_id": [f"unknown queue {queue_id!r}"]}, queue_id=queue_id)
    reason = f"Stop command{' ' + command_id if command_id else ''} from Kafka."
    target, telemetry_id = data.get("target"), data.get("telemetry_id")
    if not target and not telemetry_id:
        queue_stop(queue=queue, reason=reason)
        return Ack("stop", command_id, "accepted", queue_id=queue_id)
    steps = queue.steps.all()
    if telemetry_id:
        steps = steps.filter(telemetry_id=str(telemetry_id))
    if target:
        steps = steps.filter(target=str(target))
    steps = list(steps)
    if not steps:
        field_name = "telemetry_id" if telemetry_id else "target"
        return Ack("stop", command_id, "rejected", {field_name: ["no such step in this queue"]}, queue_id=queue_id)
    for step in steps:
        step_stop(step=step, reason=reason)
    return Ack("stop", command_id, "accepted", queue_id=queue_id)


def _count(ack: Ack, outcome: str | None = None) -> None:
    try:
        from ops.metrics import count_command
    except ImportError:
        return
    count_command(ack.command or "unknown", outcome or ack.status)


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
        try:
            ack = handle_command(data)
        except (OperationalError, InterfaceError):
            raise  # the database is unreachable: retry the batch later; handled command_ids dedupe
        except DataError as exc:  # e.g. a NUL character in a text field: bad input, not a reason to retry
            ack = Ack(data.get("command") if isinstance(data.get("command"), str) else None, None,
                      "rejected", {"non_field_errors": ["The command cannot be stored (invalid characters)."]})
            letters.append((message, f"cannot be stored: {str(exc).splitlines()[0]}"[:500]))
        except Exception as exc:  # a bug must not stop the consumer: reject and dead-letter
            logger.exception("command failed")
            ack = Ack(data.get("command") if isinstance(data.get("command"), str) else None,
                      str(data.get("command_id")) if data.get("command_id") else None,
                      "rejected", {"internal": [f"internal error: {type(exc).__name__}"]})
            letters.append((message, f"internal error: {type(exc).__name__}: {exc}"[:500]))
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
