"""R1 — storm with kill -9: 100 queues through the API and Kafka while processes are SIGKILLed.

The system runs scaled out (two Celery workers, two beats, two replicas of each consumer, gunicorn)
on the local launcher. Over a window, queues of mixed templates start (half by API with client ids,
half by `start` commands on Kafka), some are stopped and retried mid-run, and at seeded moments one
process (a worker, a beat, a consumer or the web server) is killed with SIGKILL and started again a
few seconds later. Then the streaming queues are stopped, the suite waits for quiescence and checks
every invariant: queue and step states, workloads, telemetry, commands.
"""
from __future__ import annotations

import json
import random
import threading
import time
import urllib.error

from chaos import targets
from chaos.common import Result, Run, finish, wait_consumed, wait_quiescent
from chaos.harness import Layout, System, say
from chaos.invariants import Ledger
from chaos.kafka_io import Client

FULL_QUEUES = 100
FULL_WINDOW = 150.0  # seconds of load and faults
KILLABLE = ("worker-1", "worker-2", "beat-1", "beat-2", "control-1", "control-2", "events-1", "events-2", "web")


def payloads() -> list[tuple[str, dict]]:
    """Mixed work: the two built-in templates and a small loader → connector pipeline cut from one."""
    historical = targets.template_payload("historical-pipeline")
    small = {**historical, "requests": [r for r in historical["requests"] if r["type"] == "api_trades"]}
    return [("historical", historical), ("realtime", targets.template_payload("realtime-pipeline")), ("small", small),
            ("small", small)]


def api_call(system: System, method: str, path: str, body=None, attempts: int = 60) -> tuple[int, object]:
    """The API as a patient client: retried while the web server is down (every call here is idempotent)."""
    for _ in range(attempts):
        try:
            status, answer = system.api(method, path, body, timeout=60)
            if status not in (502, 503):
                return status, answer
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1.0)
    return 599, "web unreachable"


def run(r: Run, *, window: float | None = None, victims: tuple[str, ...] = (), layout: Layout | None = None) -> Result:
    """`victims`: kill exactly these, in order, spread over the window (else seeded random picks)."""
    started = time.monotonic()
    count = r.n(FULL_QUEUES, 4)
    window = window if window is not None else max(30.0, FULL_WINDOW * min(1.0, r.scale * 4))
    result = Result("R1", r.seed, load=f"{count} queues (API + Kafka, mixed templates) over {window:.0f}s, local launcher")
    system = r.system("R1", layout or Layout())
    rng = random.Random(r.seed)
    ledger = Ledger()
    with system:
        client = Client(system.servers.kafka_bootstrap)
        mix = payloads()
        plan = sorted((rng.uniform(0, window * 0.6), i) for i in range(count))
        kills = sorted(rng.uniform(window * 0.1, window * 0.9) for _ in range(len(victims) or max(2, round(window / 12))))
        # Everything the seed decides is drawn here, before the loop: the loop's own draws (stops, retries)
        # depend on how many rounds it ran, so drawing victims or payloads there would not reproduce.
        chosen = list(victims) or [rng.choice(KILLABLE) for _ in kills]
        delays = [rng.uniform(1, 5) for _ in kills]
        kinds = [mix[rng.randrange(len(mix))] for _ in range(count)]
        rounds = random.Random(r.seed + 1)  # the mid-run stops and retries
        queue_ids: dict[str, str] = {}  # queue_id -> template kind
        pending_kafka: dict[str, str] = {}  # command_id -> kind (queue_id learnt from the database)
        # Restarts run on timers, not in this loop: the loop may sit in an API call that waits for the
        # very web server it would restart (a victim must come back on time whatever the loop is doing).
        restarts: list[threading.Timer] = []
        stopped: list[str] = []
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < window or plan:
                now = time.monotonic() - t0
                while plan and plan[0][0] <= now:
                    _, index = plan.pop(0)
                    kind, payload = kinds[index]
                    if index % 2 == 0:
                        queue_id = f"r1-{r.seed}-{index}"
                        status, _ = api_call(system, "POST", targets.API_QUEUES, {**payload, "queue_id": queue_id})
                        if status not in (200, 201):
                            result.violations.append(f"start {queue_id} answered {status}")
                        queue_ids[queue_id] = kind
                    else:
                        command_id = f"r1-{r.seed}-start-{index}"
                        body = {"command": "start", "command_id": command_id, **payload}
                        if index % 4 == 1:
                            body["queue_id"] = f"r1-{r.seed}-k{index}"
                        ledger.commands[command_id] = "start"
                        ledger.starts[command_id] = body.get("queue_id", "")
                        pending_kafka[command_id] = kind
                        client.send(system.control_topic, json.dumps(body).encode(), key=command_id.encode())
                        client.flush()
                while kills and kills[0] <= now:
                    kills.pop(0)
                    victim, delay = chosen.pop(0), delays.pop(0)
                    if system.children[victim].alive:
                        system.kill(victim)
                        result.faults.append(f"kill -9 {victim}@{now:.0f}s")
                        timer = threading.Timer(delay, system.restart, (victim,), {"wait": False})
                        timer.daemon = True
                        timer.start()
                        restarts.append(timer)
                if queue_ids and rounds.random() < 0.04:  # stop one mid-run, later retry it
                    queue_id = rounds.choice(sorted(queue_ids))
                    api_call(system, "POST", targets.api_queue_stop(queue_id))
                    stopped.append(queue_id)
                if stopped and rounds.random() < 0.03:
                    queue_id = stopped.pop(0)
                    status, _ = api_call(system, "POST", targets.api_queue_retry(queue_id))
                    if status not in (202, 409):
                        result.violations.append(f"retry {queue_id} answered {status}")
                time.sleep(0.5)
        except BaseException:
            # An error or Ctrl-C: no timer may start a process after the system is stopped.
            for timer in restarts:
                timer.cancel()
                timer.join()
            raise
        for timer in restarts:  # every victim is back before the checks
            timer.join()
        for child in system.children.values():
            child.wait_ready()
        system.wait_web()
        say(f"R1: load and faults done after {time.monotonic() - t0:.0f}s; stopping streaming queues")
        wait_consumed(system, [system.control_topic], timeout=120)
        queue_ids.update(_kafka_queue_ids(system, pending_kafka))
        _stop_streaming(system, queue_ids)
        if not wait_quiescent(system, timeout=240 + count * 2):
            # Anything still open now is stuck: the invariants below name it.
            result.violations.append("no quiescence: queues still active after the wait")
        wait_consumed(system, [system.control_topic, system.events_topic], timeout=60)
        return finish(result, system, ledger, started)


def _kafka_queue_ids(system: System, pending: dict[str, str]) -> dict[str, str]:
    import psycopg

    with psycopg.connect(system.database_url, autocommit=True) as db:
        rows = db.execute(f"SELECT command_id, queue_id FROM {targets.COMMAND_TABLE} WHERE command_id = ANY(%s)",
                          [list(pending)]).fetchall()
    return {queue_id: pending[command_id] for command_id, queue_id in rows if queue_id}


def _stop_streaming(system: System, queue_ids: dict[str, str]) -> None:
    """Realtime queues run until stopped; a retried queue may run again: stop both kinds at the end."""
    for _ in range(3):
        for queue_id, kind in sorted(queue_ids.items()):
            if kind == "realtime":
                api_call(system, "POST", targets.api_queue_stop(queue_id))
        time.sleep(5)
