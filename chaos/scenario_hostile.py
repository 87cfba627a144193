"""R3 — hostile messages: generated garbage interleaved with valid traffic on queue-control and queue-events.

The system runs without Celery workers or beat, so no workload is ever launched (the submission
marks a queue's first steps `launching`; nothing claims them) and the only telemetry is the
harness's: every valid event's `records_written` and identity can be checked exactly. Both
consumers must stay up (never restarted), every invalid message must be dead-lettered with a
reason, every valid one applied once. At the end the queues are stopped through Kafka (valid
`stop` commands), which cancels their steps — but a step the harness reported running stays
`stopping`, its queue too: no worker sends its stop command.
"""
from __future__ import annotations

import json
import time

from chaos.common import Result, Run, finish, start_template_queues, wait_consumed
from chaos.harness import Layout, say
from chaos.hostile import Generator
from chaos.invariants import Ledger
from chaos.kafka_io import Client

FULL_MESSAGES = 10_000  # per topic
QUEUES = 4


def run(r: Run) -> Result:
    started = time.monotonic()
    per_topic = r.n(FULL_MESSAGES, 50)
    result = Result("R3", r.seed, load=f"{per_topic} messages on each of queue-control and queue-events")
    system = r.system("R3", Layout(workers=0, beats=0, control=2, events=2, web_workers=1))
    with system:
        queue_ids, steps, refused = start_template_queues(system, QUEUES)
        if refused:
            result.violations.append(refused)
            return finish(result, system, Ledger(), started)
        ledger = send_hostile_traffic(system, Generator(r.seed, steps, prefix=f"r3s{r.seed}"), per_topic, queue_ids, ledger=Ledger())
        result.faults = [f"{sum(v == 'invalid' for v in ledger.event_keys.values())} invalid events",
                         f"{sum(v == 'invalid' for v in ledger.control_keys.values())} invalid commands"]
        # Stop every queue through Kafka: valid commands, acted on once.
        client = Client(system.servers.kafka_bootstrap)
        for queue_id in queue_ids:
            command_id = f"r3-stop-{r.seed}-{queue_id}"
            ledger.commands[command_id] = "stop"
            client.send(system.control_topic, json.dumps({"command": "stop", "command_id": command_id,
                                                          "queue_id": queue_id}).encode(), key=command_id.encode())
        client.flush()
        if not wait_consumed(system, [system.control_topic, system.events_topic], timeout=120 + per_topic / 20, revive=False):
            result.violations.append("the consumers did not catch up with the traffic")
        restarted = [name for name, child in system.children.items()
                     if name.startswith(("control", "events")) and (child.starts > 1 or not child.alive)]
        if restarted:
            result.violations.append(f"consumers died on input: {restarted}")
        return finish(result, system, ledger, started, set(queue_ids))


def send_hostile_traffic(system, gen: Generator, per_topic: int, queue_ids: list[str], *, ledger: Ledger) -> Ledger:
    """`per_topic` messages on each topic: about 60 % hostile, 30 % valid, 10 % replays of valid ones."""
    client = Client(system.servers.kafka_bootstrap)
    client.ensure_topics([system.control_topic, system.events_topic])
    for _ in range(per_topic):
        roll = gen.rng.random()
        event = gen.hostile_event() if roll < 0.6 else (gen.valid_event() if roll < 0.9 else gen.replayed_event())
        event = event or gen.valid_event()
        ledger.event_keys[event.key] = event.verdict
        if event.chaos_id:
            ledger.record_telemetry(event.chaos_id, event.queue_id, event.producer, event.records, event.status)
        client.send(system.events_topic, event.value, key=event.key.encode())
        roll = gen.rng.random()
        command = gen.hostile_command() if roll < 0.6 else (
            gen.valid_command(queue_ids if roll > 0.98 else []) if roll < 0.9 else gen.replayed_command())
        command = command or gen.valid_command([])
        ledger.control_keys[command.key] = command.verdict
        if command.command_id:
            ledger.commands[command.command_id] = command.command
        client.send(system.control_topic, command.value, key=command.key.encode())
    client.flush()
    say(f"R3: sent {per_topic} messages on each topic")
    return ledger
