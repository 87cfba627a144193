"""The year of history every benchmark runs against, loaded into PostgreSQL with COPY.

At the default scale (issue #12): 100,000 queues of the historical template (600,000 steps and
their dependencies) created over the past year, of which the newest 500 are running (their 4
producer/connector steps running, the graph and training steps waiting: 2,000 running Jobs), and
the rest succeeded (85 %), failed (8 %) or stopped (7 %) with consistent step states and
timestamps; telemetry for the steps of the newest `telemetry_queues` queues.

Rows are shaped by the product itself: one prototype queue per (symbol, month) is made by the real
`queue_create` inside a transaction that is rolled back, and its rows are copied with the ids,
names, states and times of each generated queue. So new columns come along by themselves.

Idempotent: a marker row (`bench_dataset`) and the row counts say whether the database already holds
this scale; then nothing is loaded. Any other content of the queue tables (another scale, leftovers
of an interrupted benchmark) is truncated first.

    python -m benchmarks.dataset --queues 2000      (with DATABASE_URL set; Django settings needed)
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone as tz

from benchmarks import targets

SYMBOLS = ["BTCUSDT", "BTCUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
MARKER_TABLE = "bench_dataset"
BENCH_PREFIX = "bench-"  # queues the figures create for themselves; never part of the history
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Scale:
    queues: int = 100_000
    active: int = 500
    telemetry_queues: int = 5_000
    events_per_step: int = 2
    seed: int = 12

    @property
    def key(self) -> str:
        return f"q{self.queues}-a{self.active}-t{self.telemetry_queues}x{self.events_per_step}-s{self.seed}"


@dataclass
class Loaded:
    scale: Scale
    queues: int
    steps: int
    edges: int
    events: int
    seconds: float
    reused: bool
    by_status: dict = field(default_factory=dict)


def ensure(scale: Scale, *, log=print) -> Loaded:
    """Load the history at `scale` unless the database already holds exactly it."""
    from django.db import connection

    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (key text PRIMARY KEY, queues int, steps int,"
                       " edges int, events int, seconds float, loaded_at timestamptz DEFAULT now())")
        cursor.execute(f"SELECT queues, steps, edges, events, seconds FROM {MARKER_TABLE} WHERE key = %s", [scale.key])
        marker = cursor.fetchone()
    if marker and _counts() == marker[:4]:
        log(f"dataset {scale.key}: reusing {marker[0]} queues, {marker[1]} steps")
        return Loaded(scale, *marker, reused=True, by_status=_by_status())
    if marker:
        log(f"dataset {scale.key}: counts {_counts()} differ from the marker's {marker[:4]}: reloading")
    started = time.monotonic()
    _truncate()
    _load(scale, log=log)
    seconds = time.monotonic() - started
    counts = _counts()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {MARKER_TABLE}")
        cursor.execute(f"INSERT INTO {MARKER_TABLE} (key, queues, steps, edges, events, seconds) VALUES (%s, %s, %s, %s, %s, %s)",
                       [scale.key, *counts, seconds])
    log(f"dataset {scale.key}: loaded {counts[0]} queues, {counts[1]} steps, {counts[2]} edges, "
        f"{counts[3]} events in {seconds:.1f} s")
    return Loaded(scale, *counts, seconds=seconds, reused=False, by_status=_by_status())


def _tables():
    m = targets.models()
    return m.Queue._meta.db_table, m.QueueRequest._meta.db_table, m.StepDependency._meta.db_table, \
        m.TelemetryEvent._meta.db_table


def _counts() -> tuple[int, int, int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        counts = []
        for table in _tables():
            cursor.execute(f"SELECT count(*) FROM {table}")
            counts.append(cursor.fetchone()[0])
    return tuple(counts)


def _by_status() -> dict:
    m = targets.models()
    from django.db.models import Count

    return dict(m.Queue.objects.order_by().values_list("status").annotate(n=Count("id")))


def _truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(_tables())} RESTART IDENTITY CASCADE")


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


def _prototypes(symbols: list[str], months: list[date]) -> dict[tuple[str, date], Prototype]:
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


# ---------------------------------------------------------------------------------------- generation

def queue_id_for(symbol: str, month: date, n: int) -> str:
    suffix, value = "", n
    for _ in range(6):
        value, digit = divmod(value, 36)
        suffix = _ALPHABET[digit] + suffix
    return f"{symbol.lower()}-api-candles-5m-{month.strftime('%Y%m%d')}-{suffix}"


def _json_columns(table_model) -> set[str]:
    from django.db.models import JSONField

    return {f.column for f in table_model._meta.concrete_fields if isinstance(f, JSONField)}


def _wrap(cols: list[str], row, json_cols: set[str]) -> list:
    # JSON as text, serialised once per prototype: text-format COPY parses it into jsonb, and a
    # Jsonb wrapper would serialise it again for every row.
    return [json.dumps(v) if c in json_cols and v is not None else v for c, v in zip(cols, row)]


def _load(scale: Scale, *, log) -> None:
    from django.db import connection

    m = targets.models()
    now = datetime.now(tz.utc).replace(microsecond=0)
    year_ago = now - timedelta(days=365)
    months = sorted({(year_ago + timedelta(days=d)).date().replace(day=1) for d in range(0, 366, 10)})
    t0 = time.monotonic()
    protos = _prototypes(SYMBOLS, months)
    log(f"dataset: {len(protos)} prototypes in {time.monotonic() - t0:.1f} s")
    any_proto = next(iter(protos.values()))
    qcols, scols, ecols = any_proto.queue_cols, any_proto.step_cols, any_proto.edge_cols
    qjson, sjson, ejson = (_json_columns(m.Queue), _json_columns(m.QueueRequest), _json_columns(m.StepDependency))
    # Prototype rows with their JSON wrapped once: every generated row of a prototype shares them.
    wrapped = {key: (_wrap(qcols, p.queue_row, qjson), [_wrap(scols, r, sjson) for r in p.step_rows],
                     [_wrap(ecols, r, ejson) for r in p.edge_rows]) for key, p in protos.items()}
    qi, si, ei = ({c: i for i, c in enumerate(cols)} for cols in (qcols, scols, ecols))
    rng = random.Random(scale.seed)
    span = (now - timedelta(hours=1) - year_ago) / max(scale.queues, 1)
    first_active = scale.queues - scale.active
    first_telemetry = scale.queues - scale.telemetry_queues
    step_id = edge_id = 0
    events = []

    # One COPY per connection (the protocol runs one at a time per connection), all three in one
    # pass; committed queues first so the deferred foreign keys of steps and edges find them.
    import contextlib

    import psycopg

    params = connection.get_connection_params()
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(**params)) for _ in range(3)]
        for conn in conns:
            _skip_row_triggers(conn)
        # The context managers are kept: one collected early would abort its COPY.
        managers = [conn.cursor().copy(f"COPY {model._meta.db_table} ({', '.join(cols)}) FROM STDIN")
                    for conn, model, cols in zip(conns, (m.Queue, m.QueueRequest, m.StepDependency), (qcols, scols, ecols))]
        qcopy, scopy, ecopy = (manager.__enter__() for manager in managers)
        if True:
            for n in range(scale.queues):
                created = year_ago + span * n
                symbol = SYMBOLS[rng.randrange(len(SYMBOLS))]
                month = (created - timedelta(days=28)).date().replace(day=1)
                month = month if (symbol, month) in protos else months[0]
                proto = protos[(symbol, month)]
                qrow, srows, erows = wrapped[(symbol, month)]
                status = "running" if n >= first_active else _history_status(rng)
                queue_id = queue_id_for(symbol, month, n)
                queue_pk = n + 1
                row = list(qrow)
                states, step_times, queue_times = _plan(status, proto, scols, created, rng)
                row[qi["id"]], row[qi["queue_id"]], row[qi["status"]] = queue_pk, queue_id, status
                row[qi["created_at"]] = created
                row[qi["updated_at"]] = queue_times["updated_at"]
                row[qi["started_at"]] = queue_times["started_at"]
                row[qi["finished_at"]] = queue_times["finished_at"]
                row[qi["stop_requested_at"]] = queue_times["stop_requested_at"]
                row[qi["message"]] = queue_times["message"]
                qcopy.write_row(row)
                base_id = step_id
                for position, prow in enumerate(srows):
                    step_id += 1
                    row = list(prow)
                    target = row[si["target"]]
                    row[si["id"]], row[si["queue_id"]] = step_id, queue_pk
                    row[si["job_name"]] = targets.job_name(queue_id, target, position + 1)
                    if row[si["kafka_topic"]]:
                        row[si["kafka_topic"]] = row[si["kafka_topic"]].replace(proto.queue_id, queue_id)
                    for key, value in step_times[position].items():
                        row[si[key]] = value
                    row[si["state"]] = states[position]
                    scopy.write_row(row)
                    if n >= first_telemetry and step_times[position]["launched_at"] is not None:
                        events.append((queue_pk, step_id, row[si["telemetry_id"]], states[position],
                                       step_times[position]))
                for prow in erows:
                    edge_id += 1
                    row = list(prow)
                    row[ei["id"]], row[ei["queue_id"]] = edge_id, queue_pk
                    row[ei["upstream_id"]] = base_id + 1 + row[ei["upstream_id"]]
                    row[ei["downstream_id"]] = base_id + 1 + row[ei["downstream_id"]]
                    ecopy.write_row(row)
            for conn, manager in zip(conns, managers):
                manager.__exit__(None, None, None)  # ends this COPY
                conn.commit()
    log(f"dataset: queues, steps, edges copied in {time.monotonic() - t0:.1f} s")
    with psycopg.connect(**params) as conn:
        _skip_row_triggers(conn)
        _copy_events(conn, m, events, scale.events_per_step, rng)
    with connection.cursor() as cursor:
        for table in _tables():
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
            cursor.execute(f"ANALYZE {table}")
    log(f"dataset: telemetry copied, analysed in {time.monotonic() - t0:.1f} s")


def _skip_row_triggers(conn) -> None:
    """Bulk load without the per-row foreign-key triggers (the generator writes consistent rows, which
    tests/test_benchmarks.py checks); needs a superuser, which the benchmarks' own server has."""
    import psycopg

    try:
        conn.execute("SET session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()


def _history_status(rng: random.Random) -> str:
    roll = rng.random()
    return "succeeded" if roll < 0.85 else "failed" if roll < 0.93 else "stopped"


def _plan(status: str, proto: Prototype, scols: list[str], created: datetime, rng: random.Random):
    """Step states and times of one queue, consistent with its status (Queue.derive_status)."""
    targets_ = [row[scols.index("target")] for row in proto.step_rows]
    started = created + timedelta(seconds=2)
    loaded = started + timedelta(minutes=rng.randint(5, 60))
    built = loaded + timedelta(minutes=rng.randint(2, 20))
    trained = built + timedelta(minutes=rng.randint(10, 90))
    states, times = [], []
    for target in targets_:
        early = target in ("loader-producer", "arango-connector")
        end = loaded if early else built if target == "graph-builder" else trained
        if status == "running":
            state = "running" if early else "waiting"
        elif status == "succeeded":
            state = "succeeded"
        elif status == "failed":
            state = "succeeded" if early else "failed" if target == "graph-builder" else "stopped"
        else:
            state = "stopped"
        launched = state in ("running", "succeeded", "failed") or (status == "stopped" and early)
        finished = None if state in ("running", "waiting") else end if launched else built
        message = {"failed": "BackoffLimitExceeded: Job has reached the specified backoff limit",
                   "stopped": "Stop requested by operator." if launched else "Cancelled: upstream ended."}.get(state, "")
        records = rng.randint(1_000, 500_000) if early and state != "waiting" else 0
        times.append({
            "launched_at": started if launched else None,
            "started_at": started + timedelta(seconds=5) if launched else None,
            "finished_at": finished,
            "state_changed_at": finished or (started + timedelta(seconds=5) if launched else created),
            "created_at": created,
            "updated_at": finished or started,
            "last_event_at": (finished or started) if launched else None,
            "last_progress_at": (finished or started) if launched and early else None,
            "records_written": records,
            "reported_status": {"succeeded": "finished", "running": "loading", "failed": "error",
                                "stopped": "interrupted" if launched else ""}.get(state, ""),
            "message": message,
            "logs": "(history: log tail kept when the step ended)\n" if finished and launched else "",
            "launch_attempts": 1 if launched else 0,
            "stop_requested_at": finished if state == "stopped" else None,
            "launcher_handle": _handle(launched),
        })
        states.append(state)
    queue_end = {"running": None, "succeeded": trained, "failed": built, "stopped": built}[status]
    queue_times = {
        "started_at": started, "finished_at": queue_end, "updated_at": queue_end or started,
        "stop_requested_at": loaded if status == "stopped" else None,
        "message": {"failed": "Step graph-builder failed: BackoffLimitExceeded",
                    "stopped": "Stop requested by operator."}.get(status, ""),
    }
    return states, times, queue_times


_HANDLE = json.dumps({"launcher": "kubernetes", "namespace": "streamforge"})


def _handle(launched: bool) -> str:
    return _HANDLE if launched else "{}"


def _copy_events(raw, m, events, per_step: int, rng: random.Random) -> None:
    """Telemetry rows from the model's fields (defaults for any column not set here)."""
    from psycopg.types.json import Jsonb

    fields = [f for f in m.TelemetryEvent._meta.concrete_fields]
    cols = [f.column for f in fields]
    statuses = {"succeeded": ["started", "finished"], "failed": ["started", "error"],
                "stopped": ["started", "interrupted"], "running": ["started", "loading"]}
    event_id = 0
    with raw.cursor() as cur, cur.copy(f"COPY {m.TelemetryEvent._meta.db_table} ({', '.join(cols)}) FROM STDIN") as copy:
        for queue_pk, step_pk, producer, state, times in events:
            kinds = statuses[state]
            for k in range(per_step):
                event_id += 1
                status = kinds[min(k, len(kinds) - 1)] if k < len(kinds) else "progress"
                at = times["started_at"] if k == 0 else (times["finished_at"] or times["updated_at"])
                payload = {"event": status, "producer": producer, "records_written": times["records_written"],
                           "timestamp": at.timestamp()}
                values = {"id": event_id, "queue_id": queue_pk, "step_id": step_pk,
                          "event_key": f"bench-{step_pk}-{k}", "status": status, "producer": producer,
                          "records_written": times["records_written"], "message": "", "payload": Jsonb(payload),
                          "source": "kafka", "sent_at": at, "received_at": at, "run": 1}
                copy.write_row([values[f.column] if f.column in values else _default(f) for f in fields])


def _default(model_field):
    from psycopg.types.json import Jsonb

    value = model_field.get_default()
    return Jsonb(value) if isinstance(value, (dict, list)) else value


def remove_bench_queues() -> int:
    """Delete the queues figures created for themselves, with everything that refers to them (the ORM
    knows every relation, e.g. audit entries); their telemetry first in one statement, since the
    ORM would load each of up to 200,000 events for the delete signals."""
    from django.db import connection

    m = targets.models()
    queue, _, _, event = _tables()
    if not m.TelemetryEvent._meta.related_objects:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {event} WHERE queue_id IN (SELECT id FROM {queue} WHERE queue_id LIKE %s)",
                           [BENCH_PREFIX + "%"])
    return m.Queue.objects.filter(queue_id__startswith=BENCH_PREFIX).delete()[0]


def clone_active(copies: int) -> int:
    """`copies` more copies of every active queue (steps and edges too), named `bench-c<k>-…`: more
    running Jobs than the history holds, for the larger reconcile figure. Returns the queues added."""
    from django.db import connection, transaction

    queue, step, edge, _ = _tables()
    added = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cols = {}
        for table in (queue, step, edge):
            cursor.execute(f"SELECT * FROM {table} LIMIT 0")
            cols[table] = [c.name for c in cursor.description]
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {queue}")
        q_off = cursor.fetchone()[0]
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {step}")
        s_off = cursor.fetchone()[0]
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {edge}")
        e_off = cursor.fetchone()[0]
        active = f"SELECT id FROM {queue} WHERE status IN ('pending', 'running', 'stopping') AND queue_id NOT LIKE 'bench-%%'"
        for k in range(1, copies + 1):
            qo, so, eo = q_off * k, s_off * k, e_off * k
            override = {
                queue: {"id": f"id + {qo}", "queue_id": f"'bench-c{k}-' || id"},
                step: {"id": f"id + {so}", "queue_id": f"queue_id + {qo}", "job_name": f"'bench-c{k}-' || id"},
                edge: {"id": f"id + {eo}", "queue_id": f"queue_id + {qo}", "upstream_id": f"upstream_id + {so}",
                       "downstream_id": f"downstream_id + {so}"},
            }
            for table, where in ((queue, f"id IN ({active})"), (step, f"queue_id IN ({active})"),
                                 (edge, f"queue_id IN ({active})")):
                select = ", ".join(override[table].get(c, c) for c in cols[table])
                cursor.execute(f"INSERT INTO {table} ({', '.join(cols[table])}) SELECT {select} FROM {table} WHERE {where}")
                if table == queue:
                    added += cursor.rowcount
        for table in (queue, step, edge):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
    return added


def main(argv=None) -> int:
    import argparse
    import os

    import django

    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataset")
    parser.add_argument("--queues", type=int, default=Scale.queues)
    parser.add_argument("--active", type=int, default=Scale.active)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "queuemanager.settings")
    django.setup()
    ensure(Scale(queues=args.queues, active=min(args.active, args.queues),
                 telemetry_queues=min(Scale.telemetry_queues, args.queues)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
