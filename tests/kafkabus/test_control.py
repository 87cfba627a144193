"""consume_queue_control against a real broker (tansu) and PostgreSQL."""
from __future__ import annotations

import json
import threading

import pytest

from consumers import control
from kafkabus.models import ProcessedCommand
from queues.models import Queue, QueueRequest, StepState
from tests.kafkabus.conftest import events_of, produce, read_topic, run_until
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db(transaction=True)


def _shape(queue: Queue) -> dict:
    """Everything about a queue's steps and edges, with its queue_id factored out."""
    qid = queue.queue_id

    def strip(value):
        return value.replace(qid, "<qid>") if isinstance(value, str) else value

    steps = [
        {f: strip(getattr(s, f)) for f in ("position", "name", "target", "type", "streaming", "job_name", "telemetry_id",
                                            "kafka_topic", "collection_name", "collection_output", "state")}
        | {"collection_inputs": s.collection_inputs, "params": s.params}
        for s in queue.steps.order_by("position")
    ]
    edges = sorted((e.upstream.name, e.downstream.name, e.kind, e.reason) for e in queue.edges.all())
    return {"steps": steps, "edges": edges, "status": queue.status, "symbol": queue.symbol,
            "canonical": queue.canonical_payload, "warnings": queue.warnings}


def test_it_starts_a_queue_like_the_api_and_acknowledges(kafka_topics, api, historical_payload):
    response = api.post("/api/queues/", {**historical_payload, "queue_id": "api-started-1"}, format="json")
    assert response.status_code == 201, response.content
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [
        {"command": "start", "command_id": "c-start-1", "queue_id": "kafka-started-1", **historical_payload},
    ])

    run_until(control.run, lambda: Queue.objects.filter(queue_id="kafka-started-1").exists())

    from_kafka = Queue.objects.get(queue_id="kafka-started-1")
    from_api = Queue.objects.get(queue_id="api-started-1")
    assert from_kafka.source == "kafka"
    assert _shape(from_kafka) == _shape(from_api)
    assert from_kafka.steps.count() == len(historical_payload["requests"])
    # Advanced on submission, as from the API: the first steps (consumers of the loader's topic) launch.
    assert list(from_kafka.steps.filter(state=StepState.LAUNCHING).values_list("name", flat=True)) == list(
        from_api.steps.filter(state=StepState.LAUNCHING).values_list("name", flat=True)) != []

    acks = events_of(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=1))
    assert acks[0]["event"] == "ack" and acks[0]["status"] == "accepted"
    assert acks[0]["command_id"] == "c-start-1" and acks[0]["queue_id"] == "kafka-started-1"
    assert acks[0]["origin"] == "queue-manager"


def test_it_acts_once_on_a_repeated_command_id(kafka_topics, historical_payload):
    command = {"command": "start", "command_id": "c-dup", **historical_payload}  # no queue_id: a new id each time
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [command, command])
    run_until(control.run, lambda: ProcessedCommand.objects.filter(command_id="c-dup").exists()
              and len(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=2, timeout=0.5)) >= 2)
    assert Queue.objects.count() == 1
    acks = events_of(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=2))
    assert [a["status"] for a in acks] == ["accepted", "accepted"]
    first, again = sorted(acks, key=lambda a: a.get("duplicate", False))
    assert again["duplicate"] is True and again["queue_id"] == first["queue_id"] == Queue.objects.get().queue_id


def test_it_acts_once_on_a_command_redelivered_after_a_restart(kafka_topics, historical_payload):
    """Dedupe is persisted: a second consumer (new group, reads from the start) does nothing new."""
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [{"command": "start", "command_id": "c-persist", **historical_payload}])
    run_until(control.run, lambda: Queue.objects.exists())
    kafka_topics.KAFKA_CONSUMER_GROUP += "-second"
    run_until(control.run, lambda: len(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=2, timeout=0.5)) >= 2)
    assert Queue.objects.count() == 1


def test_it_stops_a_queue_and_one_step(kafka_topics):
    queue = make_queue(queue_id="to-stop-1", first_advance=False)
    other = make_queue(queue_id="to-stop-2", first_advance=False)
    step = other.steps.order_by("position").first()
    QueueRequest.objects.filter(pk=step.pk).update(state=StepState.RUNNING)
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [
        {"command": "stop", "command_id": "s1", "queue_id": "to-stop-1"},
        {"command": "stop", "command_id": "s2", "queue_id": "to-stop-2", "telemetry_id": step.telemetry_id},
        {"command": "stop", "command_id": "s3", "queue_id": "no-such-queue"},
    ])
    run_until(control.run, lambda: ProcessedCommand.objects.count() == 3)

    queue.refresh_from_db()
    assert queue.stop_requested_at is not None
    assert queue.status == "stopped"  # nothing was launched yet: every step is cancelled
    assert set(queue.steps.values_list("state", flat=True)) == {StepState.STOPPED}
    step.refresh_from_db()
    assert step.state == StepState.STOPPING and step.stop_requested_at is not None
    assert other.steps.exclude(pk=step.pk).filter(stop_requested_at__isnull=False).count() == 0

    acks = {a["command_id"]: a for a in events_of(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=3))}
    assert acks["s1"]["status"] == acks["s2"]["status"] == "accepted"
    assert acks["s3"]["status"] == "rejected" and "queue_id" in acks["s3"]["errors"]


def test_it_does_not_act_on_its_own_stop_commands(kafka_topics, historical_payload):
    from kafkabus.publisher import publish_stop
    from jobs.submission import queue_create

    queue, _ = queue_create(payload=historical_payload, queue_id="own-stop", source="api")
    step = queue.steps.order_by("position").first()
    QueueRequest.objects.filter(pk=step.pk).update(state=StepState.RUNNING)
    step.refresh_from_db()
    sent = publish_stop(step)  # what the scheduler sends to the worker
    assert sent["command_id"].startswith("qm-") and sent["telemetry_id"] == step.telemetry_id
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [{"command": "ping", "command_id": "after-own"}])

    run_until(control.run, lambda: ProcessedCommand.objects.filter(command_id="after-own").exists())

    step.refresh_from_db()
    assert step.state == StepState.RUNNING and step.stop_requested_at is None
    assert not ProcessedCommand.objects.filter(command_id=sent["command_id"]).exists()
    on_control = events_of(read_topic(kafka_topics.QUEUE_CONTROL_TOPIC, expect=2))
    assert sent in on_control  # the worker-facing command is on the topic as DESIGN §6 says


def test_it_answers_ping_with_pong(kafka_topics):
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [{"command": "ping", "command_id": "p-1", "timestamp": 1}])
    run_until(control.run, lambda: ProcessedCommand.objects.filter(command_id="p-1").exists())
    events = events_of(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=1))
    assert events[0]["event"] == "pong" and events[0]["command_id"] == "p-1"


def test_it_survives_bad_input_with_rejections_and_dead_letters(kafka_topics):
    # One key, so one partition: the topic is auto-created with several and only a partition is in order;
    # unkeyed, `still-alive` could be handled before a bad message of another partition was dead-lettered.
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [
        b"\xff not json",
        b"[1, 2]",
        {"command": "explode", "command_id": "bad-1"},
        {"command": "start", "command_id": "bad-2", "symbol": "BTCUSDT", "requests": [{"target": "nope"}]},
        # The database cannot store this (NUL in a text column): rejected like any bad input, naming the field.
        {"command": "ping", "command_id": "nul-\u0000-id"},
        {"command": "ping", "command_id": "still-alive"},
    ], key="one-partition")
    run_until(control.run, lambda: ProcessedCommand.objects.filter(command_id="still-alive").exists())

    acks = {a["command_id"]: a for a in events_of(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=3))}
    assert acks["bad-1"]["status"] == "rejected" and "command" in acks["bad-1"]["errors"]
    assert acks["bad-2"]["status"] == "rejected" and acks["bad-2"]["errors"]
    assert acks["still-alive"]["event"] == "pong"
    assert not Queue.objects.exists()

    letters = read_topic(kafka_topics.QUEUE_CONTROL_DLQ_TOPIC, expect=4)
    assert sorted((m.value(), dict(m.headers())["dlq.reason_class"]) for m in letters) == sorted([
        (b"\xff not json", b"not_json"), (b"[1, 2]", b"not_object"),
        (b'{"command": "explode", "command_id": "bad-1"}', b"unknown_command"),
        (b'{"command": "ping", "command_id": "nul-\\u0000-id"}', b"invalid_field"),
    ])


# ----------------------------------------------------------- issue #10 §1, §3


def test_it_dead_letters_commands_with_malformed_fields_naming_the_field(kafka_topics):
    """Issue #10 §1 for the command parser: wrong types, a non-finite or impossible timestamp, an
    over-long command_id and JSON nested too deeply are rejected alone, dead-lettered with the field."""
    deep = b'{"command":"ping","command_id":"deep","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    # One key, so one partition: the topic is auto-created with several and only a partition is in order;
    # unkeyed, `still-alive-2` could be handled before a bad message of another partition was dead-lettered.
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [
        {"command": "ping", "command_id": {"not": "a string"}},
        b'{"command":"ping","command_id":"t-inf","timestamp":1e400}',
        {"command": "ping", "command_id": "t-date", "timestamp": "2024-06-31T00:00:00"},
        {"command": "stop", "command_id": "t-target", "queue_id": "some-queue", "target": ["a", "b"]},
        {"command": "ping", "command_id": "x" * 300},
        deep,
        {"command": "ping", "command_id": "still-alive-2"},
    ], key="one-partition")
    run_until(control.run, lambda: ProcessedCommand.objects.filter(command_id="still-alive-2").exists())
    letters = read_topic(kafka_topics.QUEUE_CONTROL_DLQ_TOPIC, expect=6)
    reasons = [dict(m.headers())["dlq.reason"].decode() for m in letters]
    assert len(reasons) == 6, reasons
    named = sorted(next(f for f in ("command_id", "timestamp", "target", "nested") if f in r) for r in reasons)
    assert named == ["command_id", "command_id", "nested", "target", "timestamp", "timestamp"], reasons
    acks = {a["command_id"]: a for a in events_of(read_topic(kafka_topics.QUEUE_EVENTS_TOPIC, expect=4))}
    assert acks["t-inf"]["status"] == acks["t-date"]["status"] == acks["t-target"]["status"] == "rejected"
    assert "target" in acks["t-target"]["errors"]
    assert ProcessedCommand.objects.filter(command_id__in=["t-inf", "t-date", "t-target"]).count() == 0


def test_it_isolates_a_command_that_makes_the_batch_handler_raise(kafka_topics, monkeypatch):
    """Issue #10 §1 (structural isolation) for consume_queue_control: an exception nobody special-cased,
    for one message only, dead-letters that message with the exception; the other commands are applied."""
    real = control.is_own_message

    def is_own_message(data):
        if data.get("command_id") == "poison-cmd":
            raise ZeroDivisionError("a bug that only this command triggers")
        return real(data)

    monkeypatch.setattr(control, "is_own_message", is_own_message)
    # One key, so one partition: the topic is auto-created with several and only a partition is in order;
    # unkeyed, the six pings could be handled before `poison-cmd` of another partition was dead-lettered.
    produce(kafka_topics.QUEUE_CONTROL_TOPIC, [{"command": "ping", "command_id": f"iso-{n}"} for n in range(3)]
            + [{"command": "ping", "command_id": "poison-cmd"}]
            + [{"command": "ping", "command_id": f"iso-{n}"} for n in range(3, 6)], key="one-partition")
    run_until(control.run, lambda: ProcessedCommand.objects.filter(command_id__startswith="iso-").count() == 6, timeout=30)
    letters = read_topic(kafka_topics.QUEUE_CONTROL_DLQ_TOPIC, expect=1)
    assert [json.loads(m.value())["command_id"] for m in letters] == ["poison-cmd"]
    assert b"ZeroDivisionError" in dict(letters[0].headers())["dlq.reason"]


def test_it_acts_once_when_two_consumers_race_the_same_command_id(historical_payload, monkeypatch):
    """Issue #10 §3: two consume_queue_control processes get the same command_id at once (here two
    threads, two PostgreSQL connections, both past any check before either acts). The claim decides:
    one acts, the other acknowledges `duplicate` — no TransactionManagementError, no internal error."""
    from django.db import connection

    real = control._execute
    cond = threading.Condition()
    entered: set[int] = set()
    done: set[int] = set()
    local = threading.local()
    results: dict[int, object] = {}

    def execute(command, command_id, data):
        me = local.index
        with cond:
            entered.add(me)
            cond.notify_all()
            # Hold the action until the other consumer has decided too (acting, or answered without acting).
            assert cond.wait_for(lambda: (1 - me) in entered | done, timeout=60)
        return real(command, command_id, data)

    def consume(index):
        local.index = index
        try:
            results[index] = control.handle_command({"command": "start", "command_id": "c-race", **historical_payload})
        except Exception as exc:  # what the bug looked like: TransactionManagementError
            results[index] = exc
        finally:
            with cond:
                done.add(index)
                cond.notify_all()
            connection.close()

    monkeypatch.setattr(control, "_execute", execute)
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(isinstance(r, control.Ack) for r in results.values()), results
    first, again = sorted(results.values(), key=lambda a: a.duplicate)
    assert (first.status, first.duplicate, first.created) == ("accepted", False, True)
    assert again.duplicate is True and again.status != "rejected"
    assert Queue.objects.count() == 1
    assert ProcessedCommand.objects.get(command_id="c-race").status == "accepted"


def test_it_records_a_permanent_failure_on_the_claim_so_a_replay_answers_the_same(monkeypatch):
    """Issue #10 §3: an action that fails for good is recorded on the claimed command_id; a redelivery
    answers the same rejection (duplicate) instead of acting again."""
    real = control._execute
    calls = []

    def execute(command, command_id, data):
        calls.append(command_id)
        if len(calls) == 1:
            raise KeyError("a bug")
        return real(command, command_id, data)

    monkeypatch.setattr(control, "_execute", execute)
    ack = control.handle_command({"command": "ping", "command_id": "c-broken"})
    assert ack.status == "rejected" and "internal" in ack.errors and "KeyError" in ack.dead_letter_reason
    again = control.handle_command({"command": "ping", "command_id": "c-broken"})
    assert again.duplicate is True and again.status == "rejected" and len(calls) == 1


def test_it_releases_the_claim_when_the_action_loses_the_database(monkeypatch):
    """Issue #10 §3: a connectivity error releases the claim, so the retried command acts."""
    from django.db import OperationalError

    real = control._execute
    calls = []

    def execute(command, command_id, data):
        calls.append(command_id)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(command, command_id, data)

    monkeypatch.setattr(control, "_execute", execute)
    with pytest.raises(OperationalError):
        control.handle_command({"command": "ping", "command_id": "c-lost"})
    assert not ProcessedCommand.objects.filter(command_id="c-lost").exists()
    ack = control.handle_command({"command": "ping", "command_id": "c-lost"})
    assert ack.status == "accepted" and not ack.duplicate and len(calls) == 2


def test_it_skips_its_own_messages_by_origin_only():
    """Issue #10 §3: a `qm-` command_id without our origin (a worker echoing the stop it obeyed) is not ours."""
    from kafkabus.config import is_own_message

    assert is_own_message({"command": "stop", "command_id": "qm-stop-1", "origin": "queue-manager"})
    assert not is_own_message({"command": "stop", "command_id": "qm-stop-1", "origin": "worker"})
    assert not is_own_message({"event": "interrupted", "command_id": "qm-stop-1"})
