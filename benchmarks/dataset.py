"""The year of history every benchmark runs against, loaded into PostgreSQL with COPY.

At the default scale (issue #12): 100,000 queues of the historical template (600,000 steps and
their dependencies) created over the past year, of which the newest 500 are running (their 4
producer/connector steps running, the graph and training steps waiting: 2,000 running Jobs), and
the rest succeeded (85 %), failed (8 %) or stopped (7 %) with consistent step states and
timestamps; telemetry for the steps of the newest `telemetry_queues` queues.

Rows are shaped by the product itself: one prototype queue per (symbol, month) is made by the real
`queue_create` inside a transaction that is rolled back, and its rows are copied with the ids,
names, states and times of each generated queue. So new columns come along by themselves.
`benchmarks.dataset_shape` makes the rows (as COPY text), `benchmarks.dataset_load` loads them the
way a restore does (indexes and constraints built once after COPY FREEZE, in one transaction).

Idempotent: a marker row (`bench_dataset`) and the row counts say whether the database already holds
this scale; then nothing is loaded. Any other content of the queue tables (another scale, leftovers
of an interrupted benchmark) is truncated first.

    python -m benchmarks.dataset --queues 2000      (with DATABASE_URL set; Django settings needed)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from benchmarks import dataset_load, targets

MARKER_TABLE = "bench_dataset"
BENCH_PREFIX = "bench-"  # queues the figures create for themselves; never part of the history


@dataclass(frozen=True)
class Scale:
    queues: int = 100_000
    active: int = 500
    telemetry_queues: int = 5_000
    events_per_step: int = 2
    seed: int = 12

    @property
    def key(self) -> str:
        # -v2: histories loaded before changes_pending was settled are loaded again.
        return f"q{self.queues}-a{self.active}-t{self.telemetry_queues}x{self.events_per_step}-s{self.seed}-v2"


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
    stages: dict = field(default_factory=dict)  # seconds per stage of this load (empty when reused)


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
    stages = dataset_load.load(scale, log=log)
    seconds = time.monotonic() - started
    counts = _counts()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {MARKER_TABLE}")
        cursor.execute(f"INSERT INTO {MARKER_TABLE} (key, queues, steps, edges, events, seconds) VALUES (%s, %s, %s, %s, %s, %s)",
                       [scale.key, *counts, seconds])
    log(f"dataset {scale.key}: loaded {counts[0]} queues, {counts[1]} steps, {counts[2]} edges, "
        f"{counts[3]} events in {seconds:.1f} s")
    return Loaded(scale, *counts, seconds=seconds, reused=False, by_status=_by_status(), stages=dict(stages))


def _tables():
    return dataset_load.tables()


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
