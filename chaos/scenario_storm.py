"""R1 / R1k — storm with kill -9: 100 queues through the API and Kafka while processes are SIGKILLed.

The system runs scaled out (two Celery workers, two beats, two replicas of each consumer, gunicorn),
on the local launcher (R1) or on the Kubernetes emulator in its own process (R1k: the harness plays
the Job controller and the pods' workers, which report progress on queue-events). Over a window,
queues of mixed templates start (half by API with client ids, half by `start` commands on Kafka),
some are stopped and retried mid-run, and at seeded moments one process (a worker, a beat, a
consumer or the web server) is killed with SIGKILL and started again a few seconds later. Then the
streaming queues are stopped, the suite waits for quiescence and checks every invariant: queue and
step states, workloads (step processes, or Jobs counted by labels over every create), telemetry,
commands.
"""
from __future__ import annotations

import contextlib
import json
import random
import threading
import time

import psycopg

from chaos import emulators, scenario_kube, targets
from chaos.common import Result, Run, api_call, finish, payloads, wait_consumed, wait_quiescent
from chaos.harness import Layout, System, say
from chaos.invariants import Ledger
from chaos.kafka_io import Client

__all__ = ["api_call", "payloads", "run", "run_kube"]  # api_call, payloads: also used from here by R5

FULL_QUEUES = 100
FULL_WINDOW = 90.0  # seconds of load and faults
FULL_KILLS = 12  # SIGKILLs over the window at full load
# Chance per half-second round of a mid-run stop, and of retrying a stopped queue: about 12 stops and
# 9 retries over the full window (what the 150 s window had at 0.04 and 0.03).
STOP_CHANCE, RETRY_CHANCE = 0.067, 0.05
KILLABLE = ("worker-1", "worker-2", "beat-1", "beat-2", "control-1", "control-2", "events-1", "events-2", "web")


def run_kube(r: Run, **options) -> Result:
    """R1k: the same storm with `JOB_LAUNCHER=kubernetes` against the Kubernetes emulator."""
    return run(r, launcher="kubernetes", **options)


def run(r: Run, *, window: float | None = None, victims: tuple[str, ...] = (), layout: Layout | None = None,
        launcher: str = "local") -> Result:
    """`victims`: kill exactly these, in order, spread over the window (else seeded random picks)."""
    started = time.monotonic()
    count = r.n(FULL_QUEUES, 4)
    window = window if window is not None else max(30.0, FULL_WINDOW * min(1.0, r.scale * 4))
    kube_mode = launcher == "kubernetes"
    name = "R1k" if kube_mode else "R1"
    result = Result(name, r.seed, load=f"{count} queues (API + Kafka, mixed templates) over {window:.0f}s, "
                                       f"{'Kubernetes emulator' if kube_mode else 'local launcher'}")
    rng = random.Random(r.seed)
    ledger = Ledger()
    (r.base / "logs").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(emulators.kube(r.base / "logs")) if kube_mode else None
        extra_env = targets.kube_env(kube.url, scenario_kube.NAMESPACE) if kube else None
        system = stack.enter_context(r.system(name, layout or Layout(), extra_env=extra_env))
        controller = None
        if kube:
            telemetry = scenario_kube.JobTelemetry(system, ledger)
            controller = scenario_kube.JobController(kube, telemetry)
            controller.start()
            stack.callback(controller.stop)
        client = Client(system.servers.kafka_bootstrap)
        mix = payloads()
        plan = sorted((rng.uniform(0, window * 0.6), i) for i in range(count))
        kills = sorted(rng.uniform(window * 0.1, window * 0.9)
                       for _ in range(len(victims) or max(2, round(FULL_KILLS * min(1.0, r.scale * 4)))))
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
                        queue_id = f"{name.lower()}-{r.seed}-{index}"
                        status, _ = api_call(system, "POST", targets.API_QUEUES, {**payload, "queue_id": queue_id})
                        if status not in (200, 201):
                            result.violations.append(f"start {queue_id} answered {status}")
                        queue_ids[queue_id] = kind
                    else:
                        command_id = f"{name.lower()}-{r.seed}-start-{index}"
                        body = {"command": "start", "command_id": command_id, **payload}
                        if index % 4 == 1:
                            body["queue_id"] = f"{name.lower()}-{r.seed}-k{index}"
                        ledger.commands[command_id] = "start"
                        ledger.control_keys[command_id] = "valid"  # never dead-lettered
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
                if queue_ids and rounds.random() < STOP_CHANCE:  # stop one mid-run, later retry it
                    queue_id = rounds.choice(sorted(queue_ids))
                    api_call(system, "POST", targets.api_queue_stop(queue_id))
                    stopped.append(queue_id)
                if stopped and rounds.random() < RETRY_CHANCE:
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
        say(f"{name}: load and faults done after {time.monotonic() - t0:.0f}s; stopping streaming queues")
        wait_consumed(system, [system.control_topic], timeout=120)
        queue_ids.update(_kafka_queue_ids(system, pending_kafka))
        _stop_streaming(system, queue_ids)
        if not wait_quiescent(system, timeout=240 + count * 2):
            # Anything still open now is stuck: the invariants below name it.
            result.violations.append("no quiescence: queues still active after the wait")
        say(f"{name}: quiescent (or given up) {time.monotonic() - t0:.0f}s after the load began")
        if controller is not None:
            controller.stop()  # every Job has ended: nothing more to report
        wait_consumed(system, [system.control_topic, system.events_topic], timeout=60)
        if kube:
            result.load += f", {len(telemetry.events)} events from the Jobs' workers"
            telemetry.expect()
            result.violations += scenario_kube.check_jobs(kube, system.database_url)
        return finish(result, system, ledger, started)


def _kafka_queue_ids(system: System, pending: dict[str, str]) -> dict[str, str]:
    with psycopg.connect(system.database_url, autocommit=True) as db:
        rows = db.execute(f"SELECT command_id, queue_id FROM {targets.COMMAND_TABLE} WHERE command_id = ANY(%s)",
                          [list(pending)]).fetchall()
    return {queue_id: pending[command_id] for command_id, queue_id in rows if queue_id}


def _stop_streaming(system: System, queue_ids: dict[str, str], timeout: float = 60.0) -> None:
    """Realtime queues run until stopped: stop each, and again any that still runs without a stop
    request (its stop met the web server down, or a retry let it run again), until none does."""
    streaming = sorted(q for q, kind in queue_ids.items() if kind == "realtime")
    deadline = time.monotonic() + timeout
    with psycopg.connect(system.database_url, autocommit=True) as db:
        while streaming and time.monotonic() < deadline:
            for queue_id in streaming:
                api_call(system, "POST", targets.api_queue_stop(queue_id))
            time.sleep(1.0)
            streaming = [r[0] for r in db.execute(
                f"SELECT queue_id FROM {targets.QUEUE_TABLE} WHERE queue_id = ANY(%s) AND status = ANY(%s) "
                f"AND stop_requested_at IS NULL", [streaming, list(targets.QUEUE_ACTIVE)])]
