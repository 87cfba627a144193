"""What every scenario shares: a system of its own on the shared servers, quiescence, the result line."""
from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from chaos import targets
from chaos.harness import Layout, Servers, System, migrate_template, say
from chaos.invariants import Context, Ledger, check_all
from chaos.kafka_io import Client


@dataclass
class Result:
    scenario: str
    seed: int
    load: str = ""
    faults: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outcome: dict = field(default_factory=dict)  # queues by final status: what the load came to

    def line(self) -> str:
        return json.dumps({"scenario": self.scenario, "seed": self.seed, "load": self.load, "faults": self.faults,
                           "violations": self.violations, "outcome": self.outcome,
                           "seconds": round(self.seconds, 1)})


@dataclass
class Run:
    """One scenario's run: its seed, scale (1.0 = the full `make chaos` load) and the shared servers."""

    seed: int
    scale: float
    servers: Servers
    base: Path

    def n(self, full: int, minimum: int = 1) -> int:
        return max(minimum, round(full * self.scale))

    def system(self, name: str, layout: Layout, extra_env: dict[str, str] | None = None) -> System:
        migrate_template(self.servers, self.base)
        slug = f"{name.lower()}-{self.seed}-{time.time_ns() % 10**6}"
        # A Redis database of its own: a task left queued by one system must never reach another's
        # workers (task arguments are primary keys of that system's database).
        with _REDIS_LOCK:  # two lanes may start systems at once
            number = next(_REDIS_DATABASES)
        redis_url = f"{self.servers.redis_url.rsplit('/', 1)[0]}/{number}"
        env = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, **(extra_env or {})}
        return System(self.base / slug, self.servers, seed=self.seed, layout=layout, topic_prefix=f"{slug}-",
                      extra_env=env, database=f"chaos_{slug.replace('-', '_')}")


_REDIS_DATABASES = itertools.cycle(range(1, 16))  # Redis has 16 by default; 0 is left to others
_REDIS_LOCK = threading.Lock()


def context(system: System, queue_ids: set[str] | None = None) -> Context:
    local = system.env.get("JOB_LAUNCHER") == "local"  # step processes to look for (else Jobs: check_jobs)
    return Context(
        database_url=system.database_url, steps_dir=system.steps_dir if local else None, kafka=Client(system.servers.kafka_bootstrap),
        control_topic=system.control_topic, events_topic=system.events_topic,
        stop_grace=float(system.env["STOP_GRACE_SECONDS"]), launch_stuck=float(system.env["LAUNCH_STUCK_SECONDS"]),
        queue_ids=queue_ids,
    )


def wait_consumed(system: System, topics: list[str], timeout: float = 300.0, *, revive: bool = True) -> bool:
    """Until the product's consumer group has committed every message of `topics`."""
    client = Client(system.servers.kafka_bootstrap)
    group = system.env["KAFKA_CONSUMER_GROUP"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.lag(topic, group) == 0 for topic in topics):
            return True
        if revive:
            system.revive_all()  # a consumer the broker aborted is restarted, as a supervisor would
        time.sleep(1.0)
    return False


def wait_quiescent(system: System, timeout: float = 300.0) -> bool:
    """Until no queue is active and no step is launched (every queue ended), or the timeout."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(system.database_url, autocommit=True) as db:
        while time.monotonic() < deadline:
            open_steps = db.execute(
                f"SELECT count(*) FROM {targets.STEP_TABLE} WHERE state = ANY(%s)", [list(targets.STEP_LAUNCHED)]
            ).fetchone()[0]
            active = db.execute(
                f"SELECT count(*) FROM {targets.QUEUE_TABLE} WHERE status = ANY(%s)", [list(targets.QUEUE_ACTIVE)]
            ).fetchone()[0]
            if not open_steps and not active:
                return True
            system.revive_all()
            time.sleep(1.0)
    return False


def finish(result: Result, system: System, ledger: Ledger, started: float, queue_ids: set[str] | None = None) -> Result:
    result.violations += check_all(context(system, queue_ids), ledger)
    with psycopg.connect(system.database_url, autocommit=True) as db:
        result.outcome = dict(db.execute(f"SELECT status, count(*) FROM {targets.QUEUE_TABLE} GROUP BY status").fetchall())
    dead = [name for name, child in system.children.items() if not child.alive]
    if dead:
        result.violations.append(f"processes not running at the end: {dead}")
    result.seconds = time.monotonic() - started
    say(f"{result.scenario}: {len(result.violations)} violation(s) in {result.seconds:.0f}s")
    return result


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


def start_template_queues(system: System, count: int) -> tuple[list[str], list[tuple[str, str]], str]:
    """Start `count` queues of the built-in templates (alternating) through the API: (queue ids,
    (queue id, telemetry id) of every step, and the first refusal as a violation text, else "")."""
    queue_ids, steps = [], []
    for index in range(count):
        payload = targets.template_payload(targets.template_names()[index % 2])
        status, body = system.api("POST", targets.API_QUEUES, payload)
        if status != 201:
            return queue_ids, steps, f"setup: POST {targets.API_QUEUES} answered {status}: {str(body)[:200]}"
        queue_ids.append(body["queue_id"])
        steps += [(body["queue_id"], step["telemetry_id"]) for step in body["steps"]]
    return queue_ids, steps, ""
