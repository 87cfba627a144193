"""Putting the history into PostgreSQL the way a restore does (issue #12: "loads the 100k-queue history
in well under a minute (COPY)").

All in one transaction, so a failure anywhere leaves the tables as they were: the tables truncated,
their indexes and their primary-key, unique and foreign-key constraints dropped (recorded first with
`pg_get_indexdef`/`pg_get_constraintdef`); one short line per queue COPied (in blocks of
`BLOCK_QUEUES` queues, made by a generator thread while the previous block is being copied) into a
temporary table, from which three INSERT … SELECT replicate the prototypes' rows
(`dataset_shape.replicate_sql`); the telemetry COPied FREEZE (allowed: the table was truncated in this
transaction); then every index built once from sorted data instead of updated row by row, the foreign
keys validated by one join each instead of a trigger per row, the sequences set. After the commit the
tables are vacuumed and analysed over two connections: a year-old database has been through autovacuum,
so its visibility map is set and index-only scans (the list's page walk, its exact COUNT) read no heap;
right after a bulk load they would, and the first run's figures would not be the steady state's.
"""
from __future__ import annotations

import queue as queues
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone as tz

from benchmarks import dataset_shape as shaping, targets

BLOCK_QUEUES = 10_000  # ~5 MB of per-queue lines and ~60,000 steps per block: big statements, bounded memory


class Stages(dict):
    """Seconds per stage of one load, in the order they ran."""

    def timed(self, name: str):
        stages = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.monotonic()

            def __exit__(self, *exc):
                stages[name] = stages.get(name, 0.0) + time.monotonic() - self.t0

        return _Timer()

    def line(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.items())


def tables() -> tuple[str, str, str, str]:
    m = targets.models()
    return m.Queue._meta.db_table, m.QueueRequest._meta.db_table, m.StepDependency._meta.db_table, \
        m.TelemetryEvent._meta.db_table


def load(scale, *, log) -> Stages:
    """Replace the content of the history's tables (and of the tables referring to them) by `scale`."""
    import psycopg
    from django.db import connection

    m = targets.models()
    stages = Stages()
    now = datetime.now(tz.utc).replace(microsecond=0)
    year_ago = now - timedelta(days=365)
    months = sorted({(year_ago + timedelta(days=d)).date().replace(day=1) for d in range(0, 366, 10)})
    with stages.timed("prototypes (queue_create)"):
        protos = shaping.prototypes(shaping.SYMBOLS, months)
    event_fields = m.TelemetryEvent._meta.concrete_fields
    generator = shaping.Generator(scale, protos, months, now, [(f.column, f.get_default()) for f in event_fields])
    queue_t, step_t, edge_t, event_t = tables()
    params = connection.get_connection_params()
    with psycopg.connect(**params) as conn:  # commits at the end, or rolls back
        # Nothing here needs to survive a crash before the end: the marker is written after the commit.
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SET work_mem = '256MB'")  # the ORDER BY of the replication sorts in memory
        with stages.timed("truncate, drop indexes and constraints"):
            conn.execute(f"TRUNCATE {', '.join(tables())} RESTART IDENTITY CASCADE")
            indexes, constraints = _drop_indexes_and_constraints(conn, tables())
            proto_tables = _proto_tables(conn, list(protos.values()), {"queue": queue_t, "step": step_t,
                                                                       "edge": edge_t})
            conn.execute(f"CREATE TEMP TABLE bench_gen ({shaping.GEN_COLUMNS}) ON COMMIT DROP")
        replicate = [(f"replicate {kind} rows (INSERT ... SELECT)",
                      shaping.replicate_sql(kind, table, proto_tables[kind][1], "bench_gen", proto_tables[kind][0]))
                     for kind, table in (("queue", queue_t), ("step", step_t), ("edge", edge_t))]
        events = f"COPY {event_t} ({', '.join(f.column for f in event_fields)}) FROM STDIN WITH (FREEZE)"
        for block in _blocks(generator, scale.queues, stages):
            with stages.timed("COPY per-queue lines"), conn.cursor() as cursor:
                with cursor.copy("COPY bench_gen FROM STDIN") as copy:
                    copy.write(block.gen)
            for stage, statement in replicate:
                with stages.timed(stage):
                    conn.execute(statement)
            conn.execute("TRUNCATE bench_gen")
            if block.events:
                with stages.timed("COPY telemetry"), conn.cursor() as cursor, cursor.copy(events) as copy:
                    copy.write(block.events)
        with stages.timed("index builds"):
            for statement in indexes + [s for kind, s in constraints if kind != "f"]:
                conn.execute(statement)
        with stages.timed("foreign keys (validated)"):
            for statement in [s for kind, s in constraints if kind == "f"]:
                conn.execute(statement)
        with stages.timed("sequences, commit"):
            for table in tables():
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                             f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
            conn.commit()
    with stages.timed("VACUUM ANALYZE (two connections)"), ThreadPoolExecutor(2) as pool:
        # After the commit, so two sessions can share the work: the steps, and the rest.
        list(pool.map(lambda group: _vacuum_analyze(params, group), [[step_t], [queue_t, edge_t, event_t]]))
    log(f"dataset stages: {stages.line()}")
    return stages


def _vacuum_analyze(params, names) -> None:
    import psycopg

    with psycopg.connect(**params, autocommit=True) as conn:
        for name in names:
            conn.execute(f"VACUUM (ANALYZE) {name}")


def _proto_tables(conn, protos, tables_by_kind) -> dict[str, tuple[str, list[str]]]:
    """Temporary tables of the prototypes' rows: the real table's columns plus PROTO_EXTRA's; per
    kind its name and the real table's columns."""
    made = {}
    for kind, (cols, text) in shaping.proto_copy_text(protos).items():
        name, extra = f"bench_proto_{kind}", shaping.PROTO_EXTRA[kind]
        # LIKE copies NOT NULL only: one prototype row per status is no duplicate there.
        conn.execute(f"CREATE TEMP TABLE {name} (LIKE {tables_by_kind[kind]}) ON COMMIT DROP")
        conn.execute(f"ALTER TABLE {name} " + ", ".join(f"ADD COLUMN {column}" for column in extra))
        all_cols = cols + [column.split()[0] for column in extra]
        with conn.cursor() as cursor, cursor.copy(f"COPY {name} ({', '.join(all_cols)}) FROM STDIN") as copy:
            copy.write(text)
        made[kind] = (name, cols)
    return made


def _drop_indexes_and_constraints(conn, names) -> tuple[list[str], list[tuple[str, str]]]:
    """Drop what a bulk load would otherwise maintain row by row; return the statements that make
    each of them again, exactly as they were (same names and definitions)."""
    from psycopg import sql

    oids = [conn.execute("SELECT %s::regclass::oid", [name]).fetchone()[0] for name in names]
    # Foreign keys of these tables and those pointing at them (from tables emptied by the CASCADE).
    constraints = conn.execute(
        "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE (contype IN ('p', 'u', 'f') AND conrelid = ANY(%(t)s)) OR (contype = 'f' AND confrelid = ANY(%(t)s))"
        " ORDER BY contype = 'f' DESC, conname", {"t": oids}).fetchall()
    indexes = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i WHERE indrelid = ANY(%(t)s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " AND c.contype IN ('p', 'u', 'x')) ORDER BY 1", {"t": oids}).fetchall()
    for table, name, _, _ in constraints:  # foreign keys first: they depend on the unique indexes
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(table), sql.Identifier(name)))
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    remake = [(kind, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
        sql.SQL(table), sql.Identifier(name), sql.SQL(definition)).as_string(conn))
        for table, name, kind, definition in constraints]
    return [definition for _, definition in indexes], sorted(remake, key=lambda c: c[0] == "f")


def _blocks(generator, total: int, stages: Stages):
    """The generator's blocks in order; each made in a thread while the previous one is loaded
    (PostgreSQL replicates block k while Python makes block k+1: the two run on both cores)."""
    ready: queues.Queue = queues.Queue(maxsize=1)
    abandoned = threading.Event()

    def hand(item) -> None:
        while not abandoned.is_set():
            try:
                return ready.put(item, timeout=1)
            except queues.Full:
                continue

    def produce():
        try:
            for start in range(0, total, BLOCK_QUEUES):
                with stages.timed("generation in Python (in the thread)"):
                    block = generator.block(start, min(total, start + BLOCK_QUEUES))
                hand(block)
        except BaseException as exc:  # handed to the loading thread, which raises it
            hand(exc)
            return
        hand(None)

    thread = threading.Thread(target=produce, name="dataset-generator", daemon=True)
    thread.start()
    try:
        while (block := ready.get()) is not None:
            if isinstance(block, BaseException):
                raise block
            yield block
    finally:
        abandoned.set()
        thread.join()
