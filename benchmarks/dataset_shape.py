"""What the history's rows look like: prototypes made by the product, and every generated queue's rows
as COPY text (issue #12). `benchmarks.dataset_load` puts them into PostgreSQL.

One prototype queue per (symbol, month) is made by the real `queue_create` inside a transaction that
is rolled back; its rows are read back and become prototype rows, one per queue status with that
status's plan applied (states, messages, which instant each time is). Python then makes only what
differs between queues (ids, names, instants, record counts: one short line per queue) and the
telemetry; PostgreSQL copies the prototype rows with those values (`replicate_sql`). New columns
come along by themselves.
"""
from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from benchmarks import targets

SYMBOLS = ["BTCUSDT", "BTCUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
STATUSES = ("running", "succeeded", "failed", "stopped")
EARLY_TARGETS = ("loader-producer", "arango-connector")  # the steps that run first (and stream)
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# Instants of one queue's life, each formatted once per queue; plans refer to them by name.
INSTANTS = ("created", "started", "started5", "loaded", "built", "trained")


# ---------------------------------------------------------------------------------------- COPY text

def copy_text(value) -> str:
    """One value in PostgreSQL's COPY text format (JSON given as Python values or as JSON text)."""
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    elif isinstance(value, (datetime, date)):
        return value.isoformat()
    elif not isinstance(value, str):
        return str(value)
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _literal(value) -> str:
    """A constant inside a format template: its braces doubled."""
    return copy_text(value).replace("{", "{{").replace("}", "}}")


# ---------------------------------------------------------------------------------------- prototypes

@dataclass
class Prototype:
    queue_id: str
    queue_cols: list[str]
    queue_row: tuple
    step_cols: list[str]
    step_rows: list[tuple]  # by position
    edge_cols: list[str]
    edge_rows: list[tuple]  # upstream/downstream as positions

    def value(self, position: int, column: str):
        return self.step_rows[position][self.step_cols.index(column)]


def prototypes(symbols: list[str], months: list[date]) -> dict[tuple[str, date], Prototype]:
    """One queue per (symbol, month) made by the product, read back, rolled back."""
    from django.db import connection, transaction

    m = targets.models()
    made = {}

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic():
            for symbol in sorted(set(symbols)):
                for month in months:
                    payload = targets.template_payload("historical-pipeline")
                    payload["symbol"] = symbol
                    end = (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
                    payload["time_range"] = f"{month.isoformat()}:{end.isoformat()}"
                    _retarget_collections(payload, symbol, month)
                    queue, _ = targets.queue_create(payload=payload, source="api")
                    made[(symbol, month)] = _read_back(connection, m, queue)
            raise Rollback
    except Rollback:
        pass
    return made


def _retarget_collections(payload: dict, symbol: str, month: date) -> None:
    """The template names June 2024 BTC collections; name this symbol's and month's instead."""
    base, period = symbol.lower().removesuffix("usdt"), month.strftime("%Y_%m")
    for request in payload["requests"]:
        for key in ("collection_inputs", "collection_output", "graph_collection", "model_output"):
            value = request.get(key)
            if isinstance(value, list):
                request[key] = [v.replace("btc", base, 1).replace("2024_06", period) for v in value]
            elif isinstance(value, str):
                request[key] = value.replace("btc", base, 1).replace("2024_06", period)


def _read_back(connection, m, queue) -> Prototype:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {m.Queue._meta.db_table} WHERE id = %s", [queue.pk])
        queue_cols, queue_row = [c.name for c in cursor.description], cursor.fetchone()
        cursor.execute(f"SELECT * FROM {m.QueueRequest._meta.db_table} WHERE queue_id = %s ORDER BY position", [queue.pk])
        step_cols, step_rows = [c.name for c in cursor.description], cursor.fetchall()
        cursor.execute(f"SELECT * FROM {m.StepDependency._meta.db_table} WHERE queue_id = %s ORDER BY id", [queue.pk])
        edge_cols, edge_rows = [c.name for c in cursor.description], cursor.fetchall()
    position = {row[step_cols.index("id")]: row[step_cols.index("position")] for row in step_rows}
    up, down = edge_cols.index("upstream_id"), edge_cols.index("downstream_id")
    edges = []
    for row in edge_rows:
        row = list(row)
        row[up], row[down] = position[row[up]], position[row[down]]
        edges.append(tuple(row))
    return Prototype(queue.queue_id, queue_cols, queue_row, step_cols, step_rows, edge_cols, edges)


def queue_id_for(symbol: str, month: date, n: int) -> str:
    suffix, value = "", n
    for _ in range(6):
        value, digit = divmod(value, 36)
        suffix = _ALPHABET[digit] + suffix
    return f"{_queue_id_head(symbol, month)}-{suffix}"


@functools.lru_cache(maxsize=None)
def _queue_id_head(symbol: str, month: date) -> str:
    return f"{symbol.lower()}-api-candles-5m-{month.strftime('%Y%m%d')}"


def offsets(m1: int, m2: int, m3: int) -> tuple[int, ...]:
    """Seconds from a queue's creation to each of its INSTANTS: started 2 s later, its steps 5 s after
    that, the loaders done `m1` minutes after the start, the graph `m2` minutes later, training `m3`."""
    loaded = 2 + 60 * m1
    return 0, 2, 7, loaded, loaded + 60 * m2, loaded + 60 * (m2 + m3)


# ---------------------------------------------------------------------------------------- plans

def history_status(rng: random.Random) -> str:
    roll = rng.random()
    return "succeeded" if roll < 0.85 else "failed" if roll < 0.93 else "stopped"


_HANDLE = json.dumps({"launcher": "kubernetes", "namespace": "streamforge"})


def step_plan(status: str, target: str) -> dict:
    """State and fields of one step of a queue in `status`, consistent with it (Queue.derive_status).
    Times are names of INSTANTS (or None); `records_written` True means a random count."""
    early = target in EARLY_TARGETS
    end = "loaded" if early else "built" if target == "graph-builder" else "trained"
    if status == "running":
        state = "running" if early else "waiting"
    elif status == "succeeded":
        state = "succeeded"
    elif status == "failed":
        state = "succeeded" if early else "failed" if target == "graph-builder" else "stopped"
    else:
        state = "stopped"
    launched = state in ("running", "succeeded", "failed") or (status == "stopped" and early)
    finished = None if state in ("running", "waiting") else end if launched else "built"
    return {
        "state": state,
        "launched_at": "started" if launched else None,
        "started_at": "started5" if launched else None,
        "finished_at": finished,
        "state_changed_at": finished or ("started5" if launched else "created"),
        "created_at": "created",
        "updated_at": finished or "started",
        "last_event_at": (finished or "started") if launched else None,
        "last_progress_at": (finished or "started") if launched and early else None,
        "records_written": early and state != "waiting",
        "reported_status": {"succeeded": "finished", "running": "loading", "failed": "error",
                            "stopped": "interrupted" if launched else ""}.get(state, ""),
        "message": {"failed": "BackoffLimitExceeded: Job has reached the specified backoff limit",
                    "stopped": "Stop requested by operator." if launched else "Cancelled: upstream ended."}.get(state, ""),
        "logs": "(history: log tail kept when the step ended)\n" if finished and launched else "",
        "launch_attempts": 1 if launched else 0,
        "stop_requested_at": finished if state == "stopped" else None,
        "launcher_handle": _HANDLE if launched else "{}",
    }


def queue_plan(status: str) -> dict:
    end = {"running": None, "succeeded": "trained", "failed": "built", "stopped": "built"}[status]
    return {
        "status": status, "created_at": "created", "started_at": "started", "finished_at": end,
        "updated_at": end or "started", "stop_requested_at": "loaded" if status == "stopped" else None,
        "message": {"failed": "Step graph-builder failed: BackoffLimitExceeded",
                    "stopped": "Stop requested by operator."}.get(status, ""),
        # Settled: the product's advance has consumed every change (the prototype, fresh from
        # queue_create, still counts its own), else the first reconcile pass advances the whole history.
        "changes_pending": 0,
    }


QUEUE_TIMES = ("created_at", "started_at", "finished_at", "updated_at", "stop_requested_at")
STEP_TIMES = ("launched_at", "started_at", "finished_at", "state_changed_at", "created_at", "updated_at",
              "last_event_at", "last_progress_at", "stop_requested_at")


# ---------------------------------------------------------------------------------------- replication
#
# PostgreSQL replicates the prototypes: Python sends one short line per queue (`GEN_COLUMNS`: its ids,
# names, instants, record counts, prototype and status) and three INSERT … SELECT join those lines to
# the prototypes' rows (one per prototype and status, the plan's constants applied), so the wide
# constant columns (JSON payloads and params) are never formatted, sent or parsed once per queue.

GEN_COLUMNS = "q bigint, qid text, proto int, status text, s0 bigint, e0 bigint, created timestamptz, " \
              "offsets int[], records bigint[], jobs text[]"
# Extra columns of the prototype tables: which prototype and status a row is for, and per time column
# the index of its instant in `offsets` (NULL: no time).
# Prefixed, so they never meet a column of the real table (queues have a status).
PROTO_EXTRA = {"queue": ["x_proto int", "x_status text"] + [f"x_t_{c} smallint" for c in QUEUE_TIMES],
               "step": ["x_proto int", "x_status text", "x_qid text"] + [f"x_t_{c} smallint" for c in STEP_TIMES],
               "edge": ["x_proto int", "x_ord int"]}


def _at_index(name) -> str:
    return r"\N" if name is None else str(INSTANTS.index(name) + 1)


def proto_copy_text(protos: list[Prototype]) -> dict[str, tuple[list[str], str]]:
    """Per kind (queue, step, edge): the real table's columns, and the COPY text of the prototype
    table (those columns, then PROTO_EXTRA's)."""
    queue_lines, step_lines, edge_lines = [], [], []
    for k, proto in enumerate(protos):
        for status in STATUSES:
            plan = queue_plan(status)
            constants = [copy_text(plan.get(c, v)) if c not in QUEUE_TIMES else copy_text(v)
                         for c, v in zip(proto.queue_cols, proto.queue_row)]
            queue_lines.append("\t".join(constants + [str(k), status] + [_at_index(plan[c]) for c in QUEUE_TIMES]))
            for p, row in enumerate(proto.step_rows):
                plan = step_plan(status, proto.value(p, "target"))
                constants = [copy_text(v) if c in STEP_TIMES or c == "records_written" else copy_text(plan.get(c, v))
                             for c, v in zip(proto.step_cols, row)]
                step_lines.append("\t".join(constants + [str(k), status, copy_text(proto.queue_id)]
                                            + [_at_index(plan[c]) for c in STEP_TIMES]))
        for i, row in enumerate(proto.edge_rows):
            edge_lines.append("\t".join([copy_text(v) for v in row] + [str(k), str(i)]))
    first = protos[0]
    return {"queue": (first.queue_cols, "\n".join(queue_lines) + "\n"),
            "step": (first.step_cols, "\n".join(step_lines) + "\n"),
            "edge": (first.edge_cols, "\n".join(edge_lines) + "\n")}


def replicate_sql(kind: str, table: str, cols: list[str], gen: str, proto_table: str) -> str:
    """INSERT … SELECT of one table's rows: the prototype's columns, except what differs per queue."""
    times = {"queue": QUEUE_TIMES, "step": STEP_TIMES, "edge": ()}[kind]
    per_queue = {
        "queue": {"id": "g.q", "queue_id": "g.qid"},
        "step": {"id": "g.s0 + p.position + 1", "queue_id": "g.q", "job_name": "g.jobs[p.position + 1]",
                 "kafka_topic": "replace(p.kafka_topic, p.x_qid, g.qid)",
                 "records_written": "g.records[p.position + 1]"},
        "edge": {"id": "g.e0 + p.x_ord + 1", "queue_id": "g.q", "upstream_id": "g.s0 + p.upstream_id + 1",
                 "downstream_id": "g.s0 + p.downstream_id + 1"},
    }[kind]
    exprs = [per_queue[c] if c in per_queue else f"g.created + g.offsets[p.x_t_{c}] * interval '1 second'" if c in times else f"p.{c}" for c in cols]
    join = "p.x_proto = g.proto" + (" AND p.x_status = g.status" if kind != "edge" else "")
    order = {"queue": "g.q", "step": "g.q, p.position", "edge": "g.q, p.x_ord"}[kind]
    return (f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(exprs)} "
            f"FROM {gen} g JOIN {proto_table} p ON {join} ORDER BY {order}")


# ---------------------------------------------------------------------------------------- generation

@dataclass
class Block:
    """COPY text of a run of consecutive queues: their `GEN_COLUMNS` lines and their telemetry."""
    gen: str
    events: str


class Generator:
    """Queues `n` = 0, 1, … of the history, in order (deterministic for a seed)."""

    def __init__(self, scale, protos: dict[tuple[str, date], Prototype], months: list[date], now: datetime,
                 event_columns: list[tuple[str, object]]):
        self.scale, self.months = scale, months
        self.keys = {key: k for k, key in enumerate(protos)}  # prototype numbers, as in proto_copy_text
        self.shapes = {key: ([p.value(i, "target") for i in range(len(p.step_rows))],
                             [p.value(i, "telemetry_id") for i in range(len(p.step_rows))], len(p.edge_rows))
                       for key, p in protos.items()}
        self.rng = random.Random(scale.seed)
        self.year_ago = now - timedelta(days=365)
        self.span = (now - timedelta(hours=1) - self.year_ago) / max(scale.queues, 1)
        self.first_active = scale.queues - scale.active
        self.first_telemetry = scale.queues - scale.telemetry_queues
        self.step_id = self.edge_id = self.event_id = 0
        self.event_line = _event_template(event_columns)
        self.random_records = {(tg, status): step_plan(status, tg)["records_written"]
                               for tg in {t for ts, _, _ in self.shapes.values() for t in ts} for status in STATUSES}

    def block(self, start: int, stop: int) -> Block:
        lines, events = [], []
        rng, randint, job_name = self.rng, self.rng.randint, targets.job_name
        for n in range(start, stop):
            created = self.year_ago + self.span * n
            symbol = SYMBOLS[rng.randrange(len(SYMBOLS))]
            month = (created - timedelta(days=28)).date().replace(day=1)
            key = (symbol, month) if (symbol, month) in self.keys else (symbol, self.months[0])
            step_targets, telemetry_ids, edges = self.shapes[key]
            status = "running" if n >= self.first_active else history_status(rng)
            queue_id = queue_id_for(symbol, month, n)
            offs = offsets(randint(5, 60), randint(2, 20), randint(10, 90))
            records = [randint(1_000, 500_000) if self.random_records[(tg, status)] else 0 for tg in step_targets]
            jobs = [job_name(queue_id, tg, p + 1) for p, tg in enumerate(step_targets)]
            lines.append(f"{n + 1}\t{queue_id}\t{self.keys[key]}\t{status}\t{self.step_id}\t{self.edge_id}\t"
                         f"{created.isoformat()}\t{{{','.join(map(str, offs))}}}\t{{{','.join(map(str, records))}}}\t"
                         f"{{{','.join(jobs)}}}\n")
            if n >= self.first_telemetry:
                at = {name: (created + timedelta(seconds=o)).isoformat() for name, o in zip(INSTANTS, offs)}
                self._events(events, n + 1, step_targets, telemetry_ids, status, at, records)
            self.step_id += len(step_targets)
            self.edge_id += edges
        return Block("".join(lines), "".join(events))

    def _events(self, out: list, q: int, step_targets, telemetry_ids, status: str, at: dict, records) -> None:
        """`events_per_step` telemetry rows per launched step: started, then how it ended (or progress)."""
        kinds = {"succeeded": "finished", "failed": "error", "stopped": "interrupted", "running": "loading"}
        for p, tg in enumerate(step_targets):
            plan = step_plan(status, tg)
            if plan["launched_at"] is None:
                continue
            step_pk, producer, written = self.step_id + 1 + p, telemetry_ids[p], records[p]
            for k in range(self.scale.events_per_step):
                self.event_id += 1
                event = "started" if k == 0 else kinds[plan["state"]] if k == 1 else "progress"
                when = at["started5"] if k == 0 else at[plan["finished_at"] or plan["updated_at"]]
                payload = {"event": event, "producer": producer, "records_written": written,
                           "timestamp": datetime.fromisoformat(when).timestamp()}
                out.append(self.event_line.format_map({
                    "id": self.event_id, "queue_id": q, "step_id": step_pk, "event_key": f"bench-{step_pk}-{k}",
                    "status": event, "producer": copy_text(producer), "records_written": written, "message": "",
                    "payload": copy_text(payload), "source": "kafka", "sent_at": when, "received_at": when, "run": 1}))


_EVENT_FIELDS = ("id", "queue_id", "step_id", "event_key", "status", "producer", "records_written", "message",
                 "payload", "source", "sent_at", "received_at", "run")


def _event_template(columns: list[tuple[str, object]]) -> str:
    """A telemetry line: the fields set per event, the model's defaults for any other column."""
    return "\t".join("{%s}" % c if c in _EVENT_FIELDS else _literal(default) for c, default in columns) + "\n"
