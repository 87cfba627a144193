"""R7 — concurrent clients against gunicorn: 200 clients × 10 starts each.

Half the clients start queues with ids of their own choosing, shared by groups of four clients that
send the same payload at the same time: each such queue is recorded exactly once, one 201, the
others 200. Then some send another payload under a taken id: 409. The other half let the manager
generate ids: every start is a new queue (201). Never a status ≥ 500. No Celery worker runs, so
nothing is launched: the scenario is about the API and the database under concurrency.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import psycopg

from chaos import targets
from chaos.common import Result, Run, finish
from chaos.harness import Layout
from chaos.invariants import Ledger

CLIENTS, STARTS = 200, 10
GROUP = 4  # clients sharing one client-chosen queue_id


def _payload(template: str, variant: int = 0) -> dict:
    payload = targets.template_payload(template)
    if variant:
        payload["symbol"] = "ETHUSDT"  # another payload under the same id: a conflict
    return payload


def run(r: Run) -> Result:
    started = time.monotonic()
    clients, starts = r.n(CLIENTS, 8), max(2, min(STARTS, r.n(STARTS, 2)))
    result = Result("R7", r.seed, load=f"{clients} clients x {starts} starts")
    # Four gunicorn workers (8 threads each): 200 clients at once on a 2-core machine shared with other
    # work; two kept the starts queueing behind each other (the scenario is about answers, not throughput).
    system = r.system("R7", Layout(workers=0, beats=0, control=0, events=0, web_workers=4))
    with system:
        templates = targets.template_names()
        shared = {c: f"r7-{r.seed}-{c // GROUP}" for c in range(clients // 2)}  # client -> its group's id
        answers: dict[str, list[tuple[int, str]]] = defaultdict(list)  # queue_id or "" -> [(status, kind)]
        generated: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(clients)

        def client(index: int) -> None:
            barrier.wait()  # all at once
            for attempt in range(starts):
                if index in shared:
                    queue_id = shared[index]
                    template = templates[(index // GROUP) % len(templates)]
                    conflict = False
                    if attempt == starts - 1 and index % GROUP == 0:
                        phase_two.wait(300)
                        conflict = True
                    body = {**_payload(template, 1 if conflict else 0), "queue_id": queue_id}
                    kind = "conflict" if conflict else "same"
                else:
                    queue_id, kind = "", "new"
                    body = _payload(templates[(index + attempt) % len(templates)])
                try:
                    status, answer = system.api("POST", targets.API_QUEUES, body, timeout=120)
                except OSError as exc:
                    status, answer = 599, str(exc)
                with lock:
                    answers[queue_id].append((status, kind))
                    if kind == "new" and status == 201 and isinstance(answer, dict):
                        generated.append(answer.get("queue_id", ""))
                if index in shared and attempt == starts - 2:
                    done_same.release()

        phase_two = threading.Event()
        done_same = threading.Semaphore(0)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        for _ in shared:  # every sharing client sent all its same-payload starts but the last
            done_same.acquire(timeout=600)
        phase_two.set()
        for thread in threads:
            thread.join(600)
        result.faults = [f"{len(set(shared.values()))} ids shared by {GROUP} concurrent clients",
                         f"{sum(1 for i in shared if i % GROUP == 0)} conflicting payloads"]
        result.violations += _check_answers(answers, generated, system)
        return finish(result, system, Ledger(), started)


def _check_answers(answers, generated: list[str], system) -> list[str]:
    out = []
    statuses = Counter(status for replies in answers.values() for status, _ in replies)
    if any(status >= 500 for status in statuses):
        out.append(f"server errors: {dict(statuses)}")
    for queue_id, replies in answers.items():
        if not queue_id:
            wrong = [s for s, _ in replies if s != 201]
            if wrong:
                out.append(f"starts without queue_id answered {Counter(wrong)} instead of 201")
            continue
        same = [s for s, kind in replies if kind == "same"]
        conflicts = [s for s, kind in replies if kind == "conflict"]
        if same.count(201) != 1 or any(s not in (200, 201) for s in same):
            out.append(f"{queue_id}: same payload answered {Counter(same)} (one 201, the rest 200 expected)")
        if any(s != 409 for s in conflicts):
            out.append(f"{queue_id}: another payload answered {Counter(conflicts)} (409 expected)")
    with psycopg.connect(system.database_url, autocommit=True) as db:
        ids = [q for q in answers if q] + generated
        rows = Counter(r[0] for r in db.execute(
            f"SELECT queue_id FROM {targets.QUEUE_TABLE} WHERE queue_id = ANY(%s)", [ids]))
        total = db.execute(f"SELECT count(*) FROM {targets.QUEUE_TABLE}").fetchone()[0]
        symbols = dict(db.execute(f"SELECT queue_id, symbol FROM {targets.QUEUE_TABLE} WHERE queue_id = ANY(%s)",
                                  [[q for q in answers if q]]).fetchall())
    missing = [q for q in ids if rows.get(q, 0) != 1]
    if missing:
        out.append(f"{len(missing)} queues not recorded exactly once, e.g. {missing[:3]}")
    if total != len(set(ids)):
        out.append(f"{total} queues in the database, {len(set(ids))} expected")
    changed = [q for q, symbol in symbols.items() if symbol != "BTCUSDT"]
    if changed:
        out.append(f"a conflicting start changed {changed[:3]}")
    return out
