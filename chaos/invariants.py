"""The invariants (DESIGN §11) checked after every scenario, over the database, the launcher and Kafka.

Each check returns violations as short strings; an empty list means the invariant holds. The
database is read with SQL (the tables named in chaos.targets), the local launcher through its state
folders and /proc, Kafka by reading whole topics back. What the harness itself sent (commands,
telemetry, hostile messages) is in a `Ledger`, the oracle the checks compare the system with.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from chaos import targets
from chaos.kafka_io import Client

# Statuses of progress reports, which the contract lets ingestion coalesce per step per batch (README
# *Event history*): stored as one row standing for several, so no longer each under its own identity.
PROGRESS_REPORTS = ("loading", "progress")
SLACK_SECONDS = 20.0  # beyond a deadline: reconcile runs every few seconds, the machine is loaded


@dataclass
class Ledger:
    """What the harness sent, i.e. what the system must show afterwards."""

    # Kafka message key -> "valid" | "invalid" (a dead letter is expected exactly for "invalid")
    control_keys: dict[str, str] = field(default_factory=dict)
    event_keys: dict[str, str] = field(default_factory=dict)
    # command_id -> kind ("start", "stop", "ping"); every one must be handled exactly once
    commands: dict[str, str] = field(default_factory=dict)
    # start command_id -> the client queue_id it named ("" when the manager generates one)
    starts: dict[str, str] = field(default_factory=dict)
    # telemetry: chaos_id of each distinct valid event -> (queue_id, producer); records per step
    telemetry_ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    records: dict[tuple[str, str], int] = field(default_factory=dict)
    # the chaos_ids of telemetry_ids that are progress reports (`loading`/`progress`): the contract lets
    # ingestion coalesce them per step per batch into one row, so they are checked per step
    progress_ids: set[str] = field(default_factory=set)

    def record_telemetry(self, chaos_id: str, queue_id: str, producer: str, records: int | None,
                         status: str = "") -> None:
        self.telemetry_ids[chaos_id] = (queue_id, producer)
        if status in PROGRESS_REPORTS:
            self.progress_ids.add(chaos_id)
        if records is not None:
            key = (queue_id, producer)
            self.records[key] = max(self.records.get(key, 0), records)


@dataclass
class Context:
    database_url: str
    steps_dir: Path | None
    kafka: Client | None
    control_topic: str
    events_topic: str
    stop_grace: float
    launch_stuck: float
    queue_ids: set[str] | None = None  # limit the checks to the scenario's queues (None: all)


def check_all(ctx: Context, ledger: Ledger) -> list[str]:
    with psycopg.connect(ctx.database_url, autocommit=True) as db:
        violations = check_queue_states(db, ctx) + check_step_deadlines(db, ctx)
        if ctx.steps_dir is not None:
            violations += check_local_workloads(db, ctx)
        violations += check_telemetry(db, ctx, ledger)
        if ctx.kafka is not None:
            violations += check_commands(db, ctx, ledger) + check_dead_letters(ctx, ledger)
    return violations


def _queues(db, ctx: Context) -> dict[str, dict]:
    rows = db.execute(
        f"SELECT q.id, q.queue_id, q.status, q.stop_requested_at, array_agg(s.state ORDER BY s.position) "
        f"FROM {targets.QUEUE_TABLE} q LEFT JOIN {targets.STEP_TABLE} s ON s.queue_id = q.id GROUP BY q.id"
    ).fetchall()
    return {r[1]: {"pk": r[0], "status": r[2], "stop_requested": r[3] is not None, "steps": [s for s in r[4] if s]}
            for r in rows if ctx.queue_ids is None or r[1] in ctx.queue_ids}


def implied_status(steps: list[str], stop_requested: bool) -> set[str]:
    """The statuses a queue may show with these step states (README *States*), written independently."""
    launched = [s for s in steps if s in targets.STEP_LAUNCHED]
    open_steps = launched or [s for s in steps if s == "waiting"]
    if any(s in targets.STEP_FAILED for s in steps):
        return {"running", "stopping"} if open_steps else {"failed"}
    if stop_requested:
        return {"stopping"} if launched else {"stopped"}
    if steps and all(s == "succeeded" for s in steps):
        return {"succeeded"}
    if steps and all(s in targets.STEP_TERMINAL for s in steps):
        return {"stopped"}
    return {"running"} if any(s != "waiting" for s in steps) else {"pending"}


def check_queue_states(db, ctx: Context) -> list[str]:
    out = []
    for queue_id, q in _queues(db, ctx).items():
        allowed = implied_status(q["steps"], q["stop_requested"])
        if q["status"] not in allowed:
            out.append(f"queue {queue_id} is {q['status']} but its steps {q['steps']} imply {sorted(allowed)}")
    return out


def _steps(db, ctx: Context, where: str = "TRUE", params: list | None = None) -> list[dict]:
    cursor = db.execute(
        f"SELECT q.queue_id, s.name, s.job_name, s.state, s.run, s.telemetry_id, s.records_written, "
        f"s.state_changed_at, s.next_launch_at, s.stop_requested_at, s.finished_at "
        f"FROM {targets.STEP_TABLE} s JOIN {targets.QUEUE_TABLE} q ON q.id = s.queue_id WHERE {where}", params or [])
    names = [c.name for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()
            if ctx.queue_ids is None or row[0] in ctx.queue_ids]


def check_step_deadlines(db, ctx: Context) -> list[str]:
    """No step `launching` or `stopping` past its deadline (plus slack for reconcile to act)."""
    now = datetime.now(timezone.utc)
    out = []
    for step in _steps(db, ctx, "s.state IN ('launching', 'stopping')"):
        if step["state"] == "launching":
            due = step["next_launch_at"] or step["state_changed_at"] + timedelta(seconds=ctx.launch_stuck)
        else:
            due = (step["stop_requested_at"] or step["state_changed_at"]) + timedelta(seconds=ctx.stop_grace)
        late = (now - due).total_seconds()
        if late > SLACK_SECONDS:
            out.append(f"step {step['queue_id']}/{step['name']} still {step['state']} {late:.0f}s past its deadline")
    return out


def _alive(pid) -> bool:
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, TypeError, IndexError):
        return False


def live_step_processes(steps_dir: Path) -> dict[str, list[int]]:
    """Job name -> pids of live step processes, found in /proc by their environment (not by pid files)."""
    marker = (str(steps_dir.resolve()) + os.sep).encode()
    found: dict[str, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for variable in environ.split(b"\0"):
            name, _, value = variable.partition(b"=")
            if name == b"MANAGER_TELEMETRY_TOKEN_FILE" and value.startswith(marker) and _alive(entry.name):
                found[value[len(marker):].split(b"/")[0].decode()].append(int(entry.name))
    return found


def check_local_workloads(db, ctx: Context) -> list[str]:
    """Every live step process belongs to a live step run, one per run; every running step has one."""
    now = datetime.now(timezone.utc)
    steps = {s["job_name"]: s for s in _steps(db, ctx)}
    live = live_step_processes(ctx.steps_dir)
    out = []
    for job_name, pids in live.items():
        if len(pids) > 1:
            out.append(f"{len(pids)} processes for one step run {job_name}: {pids}")
        step = steps.get(job_name)
        if step is None:
            if ctx.queue_ids is None:
                out.append(f"process {pids} runs for {job_name}, which is no step's current run")
            continue
        if step["state"] in targets.STEP_TERMINAL:
            ended = (now - (step["finished_at"] or step["state_changed_at"])).total_seconds()
            if ended > ctx.stop_grace + SLACK_SECONDS:
                out.append(f"process {pids} still runs for {step['queue_id']}/{step['name']}, {step['state']} {ended:.0f}s ago")
    for job_name, step in steps.items():
        if step["state"] != "running" or job_name in live:
            continue
        exit_file = ctx.steps_dir / job_name / targets.EXIT_FILE
        ended_ago = time.time() - exit_file.stat().st_mtime if exit_file.exists() else None
        if ended_ago is None or ended_ago > SLACK_SECONDS:
            out.append(f"step {step['queue_id']}/{step['name']} is running without a workload")
    return out


def check_telemetry(db, ctx: Context, ledger: Ledger) -> list[str]:
    """records_written equals what was sent (harness events; simulated batch steps' own count); every other
    event stored exactly once; progress reports (which may be coalesced per step per batch) none lost: each
    step they were sent to has progress rows standing for at least as many reports as were sent to it."""
    out = []
    steps = {(s["queue_id"], s["telemetry_id"]): s for s in _steps(db, ctx)}
    for key, sent in ledger.records.items():
        step = steps.get(key)
        if step is None:
            out.append(f"telemetry sent for {key[0]}/{key[1]}, a step that does not exist")
        elif step["records_written"] != sent:
            out.append(f"{key[0]}/{key[1]}: records_written {step['records_written']}, sent at most {sent}")
    if ledger.telemetry_ids:
        stored = Counter(r[0] for r in db.execute(
            f"SELECT payload->>'chaos_id' FROM {targets.EVENT_TABLE} WHERE payload ? 'chaos_id'"))
        exact = [c for c in ledger.telemetry_ids if c not in ledger.progress_ids]
        missing = [c for c in exact if stored.get(c, 0) == 0]
        doubled = [c for c in exact if stored.get(c, 0) > 1]
        unknown = [c for c in stored if c not in ledger.telemetry_ids and ctx.queue_ids is None]
        if missing:
            out.append(f"{len(missing)} valid telemetry events not applied, e.g. {missing[:3]}")
        if doubled:
            out.append(f"{len(doubled)} telemetry events stored more than once, e.g. {doubled[:3]}")
        if unknown:
            out.append(f"{len(unknown)} stored telemetry events the harness never sent as valid, e.g. {unknown[:3]}")
        out.extend(_check_progress_reports(db, ledger))
    if ctx.steps_dir is not None:
        for step in steps.values():
            said = _simulator_sent(ctx.steps_dir / step["job_name"] / targets.OUTPUT_FILE)
            if said is not None and (step["queue_id"], step["telemetry_id"]) not in ledger.records \
                    and step["records_written"] != said:
                out.append(f"{step['queue_id']}/{step['name']}: records_written {step['records_written']}, "
                           f"its worker sent {said}")
    return out


def _check_progress_reports(db, ledger: Ledger) -> list[str]:
    sent = Counter(ledger.telemetry_ids[c] for c in ledger.progress_ids)
    if not sent:
        return []
    statuses = list(PROGRESS_REPORTS)
    reports = {(r[0], r[1]): r[2] for r in db.execute(
        f"SELECT q.queue_id, s.telemetry_id, SUM(e.coalesced) FROM {targets.EVENT_TABLE} e "
        f"JOIN {targets.STEP_TABLE} s ON s.id = e.step_id JOIN {targets.QUEUE_TABLE} q ON q.id = e.queue_id "
        f"WHERE e.status = ANY(%s) GROUP BY q.queue_id, s.telemetry_id", [statuses])}
    short = [(key, n, reports.get(key, 0)) for key, n in sent.items() if reports.get(key, 0) < n]
    if not short:
        return []
    return [f"{len(short)} steps have fewer progress reports stored than sent to them, "
            f"e.g. (step, sent, stored) {short[:3]}"]


def _simulator_sent(path: Path) -> int | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    at = text.rfind(targets.SIMULATOR_FINISHED)
    if at < 0:
        return None
    try:
        return int(text[at + len(targets.SIMULATOR_FINISHED):].split()[0])
    except (ValueError, IndexError):
        return None


def check_commands(db, ctx: Context, ledger: Ledger) -> list[str]:
    """Each command_id handled exactly once: one final record, at most one non-duplicate ack, one queue per start."""
    out = []
    if not ledger.commands:
        return out
    rows = {r[0]: (r[1], r[2]) for r in db.execute(
        f"SELECT command_id, status, queue_id FROM {targets.COMMAND_TABLE} WHERE command_id = ANY(%s)",
        [list(ledger.commands)])}
    for command_id in ledger.commands:
        if command_id not in rows:
            out.append(f"command {command_id} was never handled")
        elif rows[command_id][0] not in ("accepted", "rejected"):
            out.append(f"command {command_id} left {rows[command_id][0]}")
    acks: dict[str, list[dict]] = defaultdict(list)
    for record in ctx.kafka.read_all(ctx.events_topic):
        try:
            data = json.loads(record.value)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict) and data.get("origin") == targets.MANAGER_ORIGIN and data.get("command_id") in ledger.commands:
            acks[data["command_id"]].append(data)
    for command_id in ledger.commands:
        first = [a for a in acks.get(command_id, []) if not a.get("duplicate")]
        if len(first) > 1:
            out.append(f"command {command_id} acted on {len(first)} times (non-duplicate acks)")
        if not acks.get(command_id):
            out.append(f"command {command_id} was never acknowledged")
    accepted_starts = {c for c in ledger.starts if rows.get(c, ("",))[0] == "accepted"}
    created = Counter(rows[c][1] for c in accepted_starts)
    for queue_id, n in created.items():
        count = db.execute(f"SELECT count(*) FROM {targets.QUEUE_TABLE} WHERE queue_id = %s", [queue_id]).fetchone()[0]
        if count != 1:
            out.append(f"start command(s) for {queue_id}: {count} queues")
    generated = [c for c in accepted_starts if not ledger.starts[c]]
    if generated and ctx.queue_ids is None:
        kafka_queues = db.execute(f"SELECT count(*) FROM {targets.QUEUE_TABLE} WHERE source = 'kafka'").fetchone()[0]
        expected = len({rows[c][1] for c in accepted_starts})
        if kafka_queues != expected:
            out.append(f"{kafka_queues} queues started from Kafka, {expected} distinct start commands accepted")
    return out


def check_dead_letters(ctx: Context, ledger: Ledger) -> list[str]:
    """The dead-letter topics hold exactly the invalid messages (by key), each with a reason."""
    out = []
    for topic, expected in ((ctx.control_topic, ledger.control_keys), (ctx.events_topic, ledger.event_keys)):
        if not expected:
            continue
        letters: dict[str, dict] = {}
        for record in ctx.kafka.read_all(topic + targets.DLQ_SUFFIX):
            key = (record.key or b"").decode("utf-8", "replace")
            if key in expected:
                letters[key] = record.headers  # a redelivered dead letter counts once (same source message)
        wrong = [k for k in letters if expected[k] == "valid"]
        missing = [k for k, kind in expected.items() if kind == "invalid" and k not in letters]
        no_reason = [k for k, h in letters.items() if not h.get("dlq.reason")]
        if wrong:
            out.append(f"{topic}: {len(wrong)} valid messages dead-lettered, e.g. "
                       + "; ".join(f"{k}: {letters[k].get('dlq.reason')}" for k in wrong[:3]))
        if missing:
            out.append(f"{topic}: {len(missing)} invalid messages not dead-lettered, e.g. {missing[:5]}")
        if no_reason:
            out.append(f"{topic}: {len(no_reason)} dead letters without a reason")
    return out
