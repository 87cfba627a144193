"""R2 — the broker gone mid-stream: every connection to it dropped and refused for seconds, twice.

The scenario runs its own tansu, reached only through a TCP relay of the harness (`BrokerLink`:
tansu advertises the relay's port, so every client, the product's and the harness's, connects
through it). At seeded moments the relay drops every connection and refuses new ones for a seeded
pause (up to longer than the consumers' session timeout, so the group also expires and rebalances),
then listens again: to the clients the broker went away and came back with its data. A real
SIGKILL of tansu cannot keep the data here: its memory engine loses every topic and offset, and
its `s3://` engine over an S3 server from PyPI (moto) keeps them but serves a few messages a
second and stops answering fetches once a partition holds a few hundred batches (README
*Reliability*). On this broker a system without Celery workers or beat runs, so the only telemetry
is the harness's and every count can be checked exactly. Over a window the harness sends valid
telemetry at a steady rate on `queue-events` (some replayed byte for byte) and commands on
`queue-control` (pings, replayed pings, `start`s with a client queue id); its producer resends
what the broker did not confirm, as an at-least-once worker would. The product's consumers and
producers must reconnect by themselves: none of its processes is restarted by the harness, and
one that died is a violation. Then every queue is stopped through Kafka and the invariants are
checked: each valid event stored once, `records_written` equal to what was sent, each command
handled and acted on once, nothing dead-lettered, nothing stuck.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import socket
import threading
import time

from confluent_kafka import Producer

from chaos import targets
from chaos.common import Result, Run, finish, start_template_queues, wait_consumed
from chaos.harness import Layout, migrate_template, say
from chaos.hostile import Generator
from chaos.invariants import Ledger
from devtools.process import LOOPBACK, free_port
from devtools.servers import KafkaServer

FULL_EVENTS = 22_500  # 500 events/s over the window
FULL_WINDOW = 45.0  # seconds of traffic
FULL_OUTAGES = 2
QUEUES = 4
COMMAND_EVERY = 50  # one command per this many events
FULL_STARTS = 10  # of those commands, `start`s (a queue each)
RESEND_ROUNDS = 5
MAX_PAUSE = 10.0  # seconds an outage lasts at most


def run(r: Run, *, window: float | None = None, outages: int | None = None) -> Result:
    started = time.monotonic()
    events = r.n(FULL_EVENTS, 300)
    window = window if window is not None else max(15.0, FULL_WINDOW * min(1.0, r.scale * 4))
    outages = outages if outages is not None else (FULL_OUTAGES if r.scale >= 0.25 else 1)
    result = Result("R2", r.seed, load=f"{events} telemetry events over {window:.0f}s ({events / window:.0f}/s) "
                                       f"and {events // COMMAND_EVERY} commands")
    rng = random.Random(r.seed)
    # The seed decides the moments and pauses before anything runs (the loop's timing must not shift them).
    # Pauses up to MAX_PAUSE: beyond the consumers' 6 s session timeout the broker also expires the group.
    # One outage per slot of the window, over before the next slot: the clients reconnect in between.
    slot = window * 0.7 / outages
    moments = [window * 0.15 + n * slot + rng.uniform(0, max(0.0, slot - MAX_PAUSE)) for n in range(outages)]
    pauses = [rng.uniform(2.0, MAX_PAUSE) for _ in moments]
    migrate_template(r.servers, r.base)  # before the copy below: the template is recorded on r.servers
    with contextlib.ExitStack() as stack:
        broker_port = free_port()
        link = BrokerLink(broker_port)
        link.open()
        stack.callback(link.close)
        broker = stack.enter_context(KafkaServer(r.base / "logs" / "r2-broker", port=broker_port,
                                                 advertised_port=link.port))
        servers = dataclasses.replace(r.servers, kafka_bootstrap=f"{LOOPBACK}:{link.port}", kafka=broker, owned=[])
        own = Run(seed=r.seed, scale=r.scale, servers=servers, base=r.base)
        system = stack.enter_context(own.system("R2", Layout(workers=0, beats=0, control=2, events=2, web_workers=1)))
        queue_ids, steps, refused = start_template_queues(system, QUEUES)
        if refused:
            result.violations.append(refused)
            return finish(result, system, Ledger(), started)
        ledger = Ledger()
        sender = Sender(servers.kafka_bootstrap)
        faults = Outages(link, moments, pauses)
        faults.start()
        try:
            queue_ids += _stream(system, sender, ledger, Generator(r.seed, steps, prefix=f"r2s{r.seed}"),
                                 events=events, window=window, starts=r.n(FULL_STARTS, 2), seed=r.seed)
        finally:
            faults.join()  # the broker is reachable again before anything else talks to it
        result.faults = faults.done
        undelivered = sender.settle()
        if undelivered:
            result.violations.append(f"the harness could not deliver {undelivered} messages after the outages")
        for queue_id in queue_ids:  # every queue stopped through Kafka: valid commands, acted on once
            command_id = f"r2-stop-{r.seed}-{queue_id}"
            ledger.commands[command_id] = "stop"
            ledger.control_keys[command_id] = "valid"
            sender.send(system.control_topic, {"command": "stop", "command_id": command_id, "queue_id": queue_id},
                        command_id)
        if sender.settle():
            result.violations.append("the stop commands could not be delivered")
        say(f"R2: sent {events} events, {len(ledger.commands)} distinct command ids; "
            f"{len(faults.done)} broker outage(s)")
        if not wait_consumed(system, [system.control_topic, system.events_topic], timeout=180 + events / 50,
                             revive=False):
            result.violations.append("the consumers did not catch up with the traffic after the outages")
        restarted = [name for name, child in system.children.items() if child.starts > 1 or not child.alive]
        if restarted:
            result.violations.append(f"processes that did not survive the broker outages: {restarted}")
        return finish(result, system, ledger, started, set(queue_ids))


def _stream(system, sender: Sender, ledger: Ledger, gen: Generator, *, events: int, window: float, starts: int,
            seed: int) -> list[str]:
    """`events` telemetry events paced evenly over `window`, a command every COMMAND_EVERY; returns the
    queue ids the `start` commands named."""
    commands = events // COMMAND_EVERY
    start_at = {round((n + 0.5) * commands / starts) for n in range(starts)}  # which commands are starts
    started_queues = []
    t0 = time.monotonic()
    for index in range(events):
        ahead = t0 + index * window / events - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        event = (gen.replayed_event() if gen.rng.random() < 0.05 else None) or gen.valid_event()
        ledger.event_keys[event.key] = "valid"
        if event.chaos_id:
            ledger.record_telemetry(event.chaos_id, event.queue_id, event.producer, event.records, event.status)
        sender.send_raw(system.events_topic, event.value, event.key)
        if index % COMMAND_EVERY != COMMAND_EVERY - 1:
            continue
        number = index // COMMAND_EVERY
        if number in start_at:
            queue_id = f"r2-{seed}-k{number}"
            command_id = f"r2-{seed}-start-{number}"
            payload = targets.template_payload(targets.template_names()[number % 2])
            ledger.starts[command_id] = queue_id
            ledger.commands[command_id] = "start"
            ledger.control_keys[command_id] = "valid"
            sender.send(system.control_topic, {**payload, "command": "start", "command_id": command_id,
                                               "queue_id": queue_id}, command_id)
            started_queues.append(queue_id)
            continue
        command = (gen.replayed_command() if gen.rng.random() < 0.2 else None) or gen.valid_command([])
        ledger.control_keys[command.key] = "valid"
        if command.command_id:
            ledger.commands[command.command_id] = command.command
        sender.send_raw(system.control_topic, command.value, command.key)
    say(f"R2: {events} events paced over {time.monotonic() - t0:.0f}s")
    return started_queues


class Sender:
    """The harness's producer: at-least-once, like a worker — what the broker did not confirm is sent again."""

    def __init__(self, bootstrap: str):
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                                  "enable.idempotence": False, "message.timeout.ms": 30000,
                                  "reconnect.backoff.max.ms": 1000, "log_level": 0})
        self.failed: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, body: dict, key: str) -> None:
        self.send_raw(topic, json.dumps(body).encode(), key)

    def send_raw(self, topic: str, value: bytes, key: str) -> None:
        def on_delivery(err, _msg, topic=topic, value=value, key=key.encode()):
            if err is not None:
                self.failed.append((topic, value, key))

        while True:
            try:
                self.producer.produce(topic, value=value, key=key.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def settle(self) -> int:
        """Flush; resend what failed, a few rounds; returns how many messages were never confirmed."""
        for _ in range(RESEND_ROUNDS):
            self.producer.flush(60)
            if not self.failed:
                return 0
            again, self.failed = self.failed, []
            say(f"R2: resending {len(again)} messages the broker did not confirm")
            for topic, value, key in again:
                self.send_raw(topic, value, key.decode())
        self.producer.flush(60)
        return len(self.failed)


class Outages(threading.Thread):
    """At each moment (seconds from start): cut the link to the broker for the pause, then open it again."""

    def __init__(self, link: BrokerLink, moments: list[float], pauses: list[float]):
        super().__init__(name="r2-outages", daemon=True)
        self.link, self.moments, self.pauses = link, moments, pauses
        self.done: list[str] = []

    def run(self) -> None:
        t0 = time.monotonic()
        for moment, pause in zip(self.moments, self.pauses):
            time.sleep(max(0.0, t0 + moment - time.monotonic()))
            cut_at = time.monotonic() - t0
            dropped = self.link.cut()
            time.sleep(pause)
            self.link.open()
            self.done.append(f"broker unreachable@{cut_at:.0f}s for {pause:.1f}s ({dropped} connections dropped)")


class BrokerLink:
    """A TCP relay in front of the broker. `cut()` drops every connection through it and stops
    listening (new ones are refused) until `open()`: for the clients the broker went away."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="r2-link", daemon=True).start()

    def cut(self) -> int:
        """Stop listening and drop every open connection; returns how many pairs were dropped."""
        with self._lock:
            listener, self._listener = self._listener, None
            dropped, self._sockets = self._sockets, set()
        if listener is not None:
            _close(listener)  # shutdown() wakes the thread blocked in accept()
        for sock in dropped:
            _close(sock)
        return len(dropped) // 2

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if listener is not self._listener:  # cut meanwhile: this one goes too
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:  # one side gone: so is the other (what a broker that dies does to its clients)
            with self._lock:
                self._sockets.difference_update((source, target))
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
