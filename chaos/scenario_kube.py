"""R6 — Kubernetes API faults: the launcher and reconcile against an API that fails at a seeded rate.

The Kubernetes emulator runs in its own process; the system runs with `JOB_LAUNCHER=kubernetes` on
it. Its control surface injects, at a seeded rate, 500/503, 429 with Retry-After, 409 on a create
that did go through (the answer lost), slow answers past the client's timeout (the server acts, the
client gave up) and refused connections (the listener closed for a few seconds). The harness plays
the Job controller through the control surface: a Job gets a running pod, a batch Job succeeds a
few seconds later, a streaming one runs until the manager deletes it. Queues of mixed templates
start during the faults; afterwards the faults stop, the streaming queues are stopped and, after
quiescence: no step run ever had two Jobs (counted by labels over every create), no live Job
without a live step, every step ran to its end or failed with a reason (its retry budget spent),
nothing stays `launching`; plus every invariant of the other scenarios.
"""
from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter

import psycopg

from chaos import emulators, targets
from chaos.common import Result, Run, api_call, finish, payloads, wait_quiescent
from chaos.harness import Layout, System, say
from chaos.invariants import PROGRESS_REPORTS, Ledger
from chaos.kafka_io import Client

FULL_QUEUES = 40
FULL_WINDOW = 90.0  # starts over the first 60 %, the faults on until its end
FAULT_RATE = 0.15
NAMESPACE = "chaos"
BATCH_RUNS_FOR = 1.5  # seconds a batch Job runs before the emulated controller completes it


def run(r: Run, *, window: float | None = None, rate: float = FAULT_RATE) -> Result:
    started = time.monotonic()
    count = r.n(FULL_QUEUES, 3)
    window = window if window is not None else max(20.0, FULL_WINDOW * min(1.0, r.scale * 4))
    result = Result("R6", r.seed, load=f"{count} queues over {window:.0f}s, Kubernetes launcher, fault rate {rate:.0%}")
    (r.base / "logs").mkdir(parents=True, exist_ok=True)
    with emulators.kube(r.base / "logs") as kube:
        system = r.system("R6", Layout(workers=2, beats=2, control=0, events=0, web_workers=1),
                          extra_env=targets.kube_env(kube.url, NAMESPACE))
        with system:
            controller = JobController(kube)
            controller.start()
            kube.control("POST", "/_emulator/faults", {"seed": r.seed, "rate": rate, "slow_seconds": 35,
                                                        "refuse_seconds": 3})
            queue_ids = _start_queues(r, system, count, window, result)
            injected = kube.control("DELETE", "/_emulator/faults")["injected"]
            result.faults = [f"{n} x {kind}" for kind, n in sorted(injected.items())]
            say(f"R6: faults off after {time.monotonic() - started:.0f}s: {injected}")
            for queue_id, kind in sorted(queue_ids.items()):
                if kind == "realtime":
                    api_call(system, "POST", targets.api_queue_stop(queue_id))
            if not wait_quiescent(system, timeout=300):
                result.violations.append("no quiescence: queues still active after the wait")
            controller.stop()
            result.violations += check_jobs(kube, system.database_url)
            return finish(result, system, Ledger(), started)


def _start_queues(r: Run, system, count: int, window: float, result: Result) -> dict[str, str]:
    import random

    rng = random.Random(r.seed)
    mix = payloads()
    plan = sorted(rng.uniform(0, window * 0.6) for _ in range(count))
    queue_ids: dict[str, str] = {}
    t0 = time.monotonic()
    for index, at in enumerate(plan):
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        kind, payload = mix[rng.randrange(len(mix))]
        queue_id = f"r6-{r.seed}-{index}"
        status, _ = api_call(system, "POST", targets.API_QUEUES, {**payload, "queue_id": queue_id})
        if status not in (200, 201):
            result.violations.append(f"start {queue_id} answered {status}")
        queue_ids[queue_id] = kind
    time.sleep(max(0.0, window - (time.monotonic() - t0)))
    return queue_ids


class JobController(threading.Thread):
    """The Job controller and kubelet, played through the emulator's control surface; with `telemetry`,
    also the workers in the pods: each Job run reports its progress once it runs (R1k)."""

    def __init__(self, kube, telemetry: JobTelemetry | None = None):
        super().__init__(daemon=True, name="job-controller")
        self.kube, self.telemetry, self.running_since, self.done = kube, telemetry, {}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                jobs = self.kube.control("GET", f"/_emulator/jobs?namespace={NAMESPACE}")["items"]
            except OSError:
                continue
            live = [job for job in jobs if not (job["deleting"] or _finished(job["status"]))]
            self._report("progress", [job["name"] for job in live if job["status"].get("active")])
            ending = []
            for job in live:
                status, name = job["status"], job["name"]
                since = self.running_since.setdefault(name, time.monotonic())
                if not status.get("active"):
                    self._mark(name, "running")
                    continue
                streaming = job["labels"].get(targets.JOB_LABEL_TYPE, "").startswith(targets.STREAMING_TYPES)
                if not streaming and time.monotonic() - since >= BATCH_RUNS_FOR:
                    ending.append(name)
            self._report("finished", ending)  # a worker says it is done before its pod ends
            for name in ending:
                self._mark(name, "succeeded")

    def _report(self, event: str, names: list[str]) -> None:
        if self.telemetry is not None and names:
            try:
                self.telemetry.report(event, names)
            except (OSError, psycopg.Error):
                pass  # the next pass reports what this one could not

    def _mark(self, name: str, phase: str) -> None:
        try:
            self.kube.control("POST", "/_emulator/mark", {"namespace": NAMESPACE, "name": name, "phase": phase})
        except OSError:
            pass  # deleted meanwhile (404) or the emulator busy: the next pass sees it again

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def _finished(status: dict) -> bool:
    return bool(status.get("conditions") or status.get("succeeded") or status.get("failed"))


class JobTelemetry:
    """What the workers in the pods would send on queue-events: `progress` once the Job runs, `finished`
    before a batch Job ends, each once per Job run and with the same records, for the step run the Job
    is (found by its name in the database; a Job of a run already replaced is skipped: its events would
    only be stored as history). Everything sent goes into the ledger."""

    def __init__(self, system: System, ledger: Ledger):
        self.client, self.topic = Client(system.servers.kafka_bootstrap), system.events_topic
        self.database_url, self.ledger = system.database_url, ledger
        self.sent: dict[str, int] = {}  # Job name -> records its worker reported
        self.events: set[tuple[str, str]] = set()  # (Job name, event) sent

    def report(self, event: str, job_names: list[str]) -> None:
        new = [name for name in job_names if (name, event) not in self.events]
        if not new:
            return
        with psycopg.connect(self.database_url, autocommit=True) as db:
            rows = db.execute(f"SELECT s.job_name, q.queue_id, s.telemetry_id, s.run FROM {targets.STEP_TABLE} s "
                              f"JOIN {targets.QUEUE_TABLE} q ON q.id = s.queue_id WHERE s.job_name = ANY(%s)",
                              [new]).fetchall()
        for job_name, queue_id, producer, run in rows:
            records = 1 + zlib.crc32(job_name.encode()) % 5000
            chaos_id = f"tele-{event}-{job_name}"
            body = {"event": event, "queue_id": queue_id, "producer": producer, "records_written": records,
                    "run": run, "chaos_id": chaos_id}
            self.ledger.telemetry_ids[chaos_id] = (queue_id, producer)
            if event in PROGRESS_REPORTS:
                self.ledger.progress_ids.add(chaos_id)  # may be coalesced with others of its step
            self.ledger.event_keys[chaos_id] = "valid"  # never dead-lettered
            self.client.send(self.topic, json.dumps(body).encode(), key=chaos_id.encode())
            self.sent[job_name] = records
            self.events.add((job_name, event))
        self.client.flush()

    def expect(self) -> None:
        """Each step's records_written must be what its current run's worker reported (0 if none did)."""
        with psycopg.connect(self.database_url, autocommit=True) as db:
            for queue_id, producer, job_name in db.execute(
                    f"SELECT q.queue_id, s.telemetry_id, s.job_name FROM {targets.STEP_TABLE} s "
                    f"JOIN {targets.QUEUE_TABLE} q ON q.id = s.queue_id"):
                self.ledger.records[(queue_id, producer)] = self.sent.get(job_name, 0)


def check_jobs(kube, database_url: str) -> list[str]:
    """No step run with two Jobs ever; no live Job without a live step, no running step without a live
    Job; every failed step says why."""
    out = []
    created = Counter((labels.get(targets.JOB_LABEL_QUEUE), labels.get(targets.JOB_LABEL_STEP),
                       labels.get(targets.JOB_LABEL_RUN)) for labels in kube.control("GET", "/_emulator/created")["items"])
    twice = {key: n for key, n in created.items() if n > 1}
    if twice:
        out.append(f"{len(twice)} step runs got more than one Job, e.g. {list(twice.items())[:3]}")
    with psycopg.connect(database_url, autocommit=True) as db:
        steps = {row[0]: row[1:] for row in db.execute(
            f"SELECT s.job_name, s.state, s.message, q.queue_id, s.name FROM {targets.STEP_TABLE} s "
            f"JOIN {targets.QUEUE_TABLE} q ON q.id = s.queue_id")}
    live = set()
    for job in kube.control("GET", f"/_emulator/jobs?namespace={NAMESPACE}")["items"]:
        if job["deleting"] or _finished(job["status"]):
            continue
        live.add(job["name"])
        step = steps.get(job["name"])
        if step is None or step[0] not in targets.STEP_LAUNCHED:
            out.append(f"Job {job['name']} is live but its step is {step[0] if step else 'gone'}")
    for job_name, (state, message, queue_id, name) in steps.items():
        if state in targets.STEP_FAILED and not message.strip():
            out.append(f"step {queue_id}/{name} {state} without a reason")
        if state == "running" and job_name not in live:
            out.append(f"step {queue_id}/{name} is running without a Job")
        if state not in targets.STEP_TERMINAL and state != "waiting":
            out.append(f"step {queue_id}/{name} still {state} after quiescence")
    return out
