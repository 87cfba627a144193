"""R5 — mirror outage: ArangoDB gone for 60 s during activity; afterwards the mirror converges.

The ArangoDB emulator runs in its own process; the system runs with the mirror switched on
(`ARANGO_URL` …), a Celery worker, beat, the events consumer and the local launcher, so queues
start, their simulated steps send telemetry, and every change is mirrored. During that activity
ArangoDB goes away (its listener closed: connections refused) for 60 s × scale, then comes back
with its data, as a restarted server does. After quiescence the suite waits for the mirror to
converge and compares every queue and step document with PostgreSQL (status/state, records,
updated_at; no document missing or extra; no change left in the outbox): 0 differences.
"""
from __future__ import annotations

import base64
import json
import secrets
import signal
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import psycopg

from chaos import emulators, targets
from chaos.common import Result, Run, finish, wait_quiescent
from chaos.harness import Layout, say
from chaos.invariants import Ledger
from chaos.scenario_storm import api_call, payloads

FULL_QUEUES = 20
FULL_OUTAGE = 60.0
DATABASE = "chaos_mirror"


def run(r: Run, *, outage: float | None = None) -> Result:
    started = time.monotonic()
    count, outage = r.n(FULL_QUEUES, 3), outage if outage is not None else max(10.0, FULL_OUTAGE * r.scale)
    result = Result("R5", r.seed, load=f"{count} queues (historical and small), local launcher, mirror on")
    password = secrets.token_urlsafe(12)
    (r.base / "logs").mkdir(parents=True, exist_ok=True)
    arango = emulators.EmulatorProcess("arango-emulator", targets.ARANGO_EMULATOR, r.base / "logs",
                                       ("--password", password))
    with arango:
        system = r.system("R5", Layout(workers=2, beats=1, control=1, events=1, web_workers=1),
                          extra_env=targets.arango_env(arango.url, DATABASE, password))
        with system:
            import random

            rng = random.Random(r.seed)
            batch = [(kind, payload) for kind, payload in payloads() if kind != "realtime"]
            down_at = outage * 0.2  # the outage starts while queues are still starting
            t0, down, queue_ids = time.monotonic(), False, []
            for index in range(count):
                if not down and time.monotonic() - t0 >= down_at:
                    arango.proc.send_signal(signal.SIGUSR1)
                    down, down_since = True, time.monotonic()
                    say("R5: ArangoDB down")
                kind, payload = batch[rng.randrange(len(batch))]
                queue_id = f"r5-{r.seed}-{index}"
                status, _ = api_call(system, "POST", targets.API_QUEUES, {**payload, "queue_id": queue_id})
                if status not in (200, 201):
                    result.violations.append(f"start {queue_id} answered {status}")
                queue_ids.append(queue_id)
                time.sleep(outage * 0.6 / count)
            if not down:
                arango.proc.send_signal(signal.SIGUSR1)
                down_since = time.monotonic()
            time.sleep(max(0.0, outage - (time.monotonic() - down_since)))
            arango.proc.send_signal(signal.SIGUSR2)
            result.faults = [f"ArangoDB refused connections for {time.monotonic() - down_since:.0f}s during activity"]
            say("R5: ArangoDB back")
            if not wait_quiescent(system, timeout=300):
                result.violations.append("no quiescence: queues still active after the wait")
            differences = _converged(arango.url, password, system.database_url, timeout=180)
            if differences:
                result.violations.append(f"{len(differences)} differences between ArangoDB and PostgreSQL, "
                                         f"e.g. {differences[:5]}")
            return finish(result, system, Ledger(), started)


def _converged(url: str, password: str, database_url: str, timeout: float) -> list[str]:
    """Until the mirror equals PostgreSQL (returns []), or the differences left at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            differences = compare(url, password, database_url)
        except OSError as exc:
            differences = [f"ArangoDB unreadable: {exc}"]
        if not differences or time.monotonic() > deadline:
            return differences
        time.sleep(2.0)


def compare(url: str, password: str, database_url: str) -> list[str]:
    """Every queue and step in PostgreSQL against its document in ArangoDB, and the other way round."""
    with psycopg.connect(database_url, autocommit=True) as db:
        pending = db.execute(f"SELECT count(*) FROM {targets.MIRROR_OUTBOX_TABLE}").fetchone()[0]
        queues = {row[0]: {"status": row[1], "updated_at": row[2]} for row in db.execute(
            f"SELECT queue_id, status, updated_at FROM {targets.QUEUE_TABLE}")}
        steps = {(row[0], row[1]): {"state": row[2], "records_written": row[3], "updated_at": row[4]}
                 for row in db.execute(f"SELECT q.queue_id, s.name, s.state, s.records_written, s.updated_at "
                                       f"FROM {targets.STEP_TABLE} s JOIN {targets.QUEUE_TABLE} q ON q.id = s.queue_id")}
    out = [f"{pending} changes still in the outbox"] if pending else []
    docs = {d["queue_id"]: d for d in _all(url, password, targets.ARANGO_QUEUES)}
    out += _diff("queue", queues, docs)
    docs = {(d["queue_id"], d["name"]): d for d in _all(url, password, targets.ARANGO_STEPS)}
    out += _diff("step", steps, docs)
    return out


def _diff(kind: str, rows: dict, docs: dict) -> list[str]:
    out = [f"{kind} {key} missing in ArangoDB" for key in rows.keys() - docs.keys()]
    out += [f"{kind} {key} in ArangoDB only" for key in docs.keys() - rows.keys()]
    for key in rows.keys() & docs.keys():
        for field, value in rows[key].items():
            theirs = docs[key].get(field)
            if isinstance(value, datetime):
                theirs = datetime.fromisoformat(theirs) if theirs else None
                value = value.astimezone(timezone.utc)
            if theirs != value:
                out.append(f"{kind} {key} {field}: {value} in PostgreSQL, {theirs} in ArangoDB")
    return out


def _all(url: str, password: str, collection: str) -> list[dict]:
    """Every document of `collection`, through the cursor API (as the database's user reads it)."""
    auth = "Basic " + base64.b64encode(f"root:{password}".encode()).decode()

    def call(method: str, path: str, body: object = None) -> dict:
        request = urllib.request.Request(f"{url}/_db/{DATABASE}{path}", method=method, headers={"Authorization": auth},
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no database or collection yet: nothing mirrored
                return {"result": [], "hasMore": False}
            raise

    answer = call("POST", "/_api/cursor", {"query": "FOR d IN @@col RETURN d", "bindVars": {"@col": collection},
                                           "batchSize": 1000})
    docs = list(answer["result"])
    while answer.get("hasMore"):
        answer = call("PUT", f"/_api/cursor/{answer['id']}")
        docs += answer["result"]
    return docs
