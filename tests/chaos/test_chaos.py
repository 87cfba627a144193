"""The CI subset of the fault-injection suite (issue #14): small loads of R3 and R7, one kill -9 of a
consumer and of a worker, each ending with the invariant check; and the checker's own tests (it
must see a violation when there is one). The full suite is `make chaos` (README *Reliability*)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from chaos import scenario_clients, scenario_hostile, scenario_storm
from chaos.common import Run
from chaos.harness import Layout, Servers
from chaos.invariants import Context, Ledger, check_dead_letters, check_local_workloads, implied_status
from chaos.kafka_io import Client

SEED = int(os.environ.get("CHAOS_SEED", "1414"))

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def chaos_run(postgres_server, redis_server, kafka_server, tmp_path_factory):
    servers = Servers(postgres_server.url, redis_server.url, kafka_server.bootstrap)
    return Run(seed=SEED, scale=0.01, servers=servers, base=tmp_path_factory.mktemp("chaos"))


def test_it_dead_letters_every_hostile_message_and_applies_every_valid_one(chaos_run):
    """R3: hostile messages interleaved with valid traffic on both topics; consumers stay up."""
    result = scenario_hostile.run(chaos_run)
    assert result.violations == [], result.line()
    assert result.outcome == {"stopped": scenario_hostile.QUEUES}, result.line()


def test_it_records_each_concurrent_start_once(chaos_run):
    """R7: concurrent clients against gunicorn: one queue per id, 200 for repeats, 409 for conflicts, no 5xx."""
    result = scenario_clients.run(chaos_run)
    assert result.violations == [], result.line()


def test_it_recovers_from_kill_9_of_a_consumer_and_a_worker(chaos_run):
    """R1 (small): queues through API and Kafka while an events consumer and a Celery worker are SIGKILLed."""
    result = scenario_storm.run(chaos_run, window=30, victims=("events-1", "worker-1"),
                                layout=Layout(workers=2, beats=2, control=1, events=2, web_workers=1))
    assert [f.split("@")[0] for f in result.faults] == ["kill -9 events-1", "kill -9 worker-1"], result.line()
    assert result.violations == [], result.line()
    assert sum(result.outcome.values()) >= 4 and set(result.outcome) <= {"succeeded", "stopped"}, result.line()


# -- the checker sees violations ----------------------------------------------------------------------

def test_the_checker_derives_queue_status_from_steps():
    """Invariant 1: a queue's status is what its steps imply."""
    assert implied_status(["succeeded", "succeeded"], False) == {"succeeded"}
    assert implied_status(["succeeded", "failed"], False) == {"failed"}
    assert implied_status(["running", "failed"], False) == {"running", "stopping"}
    assert implied_status(["running", "waiting"], True) == {"stopping"}
    assert implied_status(["stopped", "waiting"], True) == {"stopped"}
    assert implied_status(["waiting", "waiting"], False) == {"pending"}


def test_the_checker_finds_a_missing_and_a_wrong_dead_letter(kafka_server):
    """Invariant 5: an invalid message with no dead letter, a valid one dead-lettered, a letter without reason."""
    topic = f"chaos-check-{uuid.uuid4().hex[:8]}"
    client = Client(kafka_server.bootstrap)
    client.ensure_topics([topic + "-dlq"])
    client.send(topic + "-dlq", b"{}", key=b"valid-1")
    client.flush()
    ledger = Ledger(event_keys={"valid-1": "valid", "invalid-1": "invalid"})
    ctx = Context("", None, client, "unused", topic, 1, 1)
    found = check_dead_letters(ctx, ledger)
    assert len(found) == 3, found
    assert "1 valid messages dead-lettered" in found[0]
    assert "1 invalid messages not dead-lettered, e.g. ['invalid-1']" in found[1]
    assert "1 dead letters without a reason" in found[2]


@pytest.mark.django_db
def test_the_checker_finds_a_workload_without_a_step(tmp_path, postgres_server):
    """Invariant 2: a live step process that no step owns is reported (found through /proc, not pid files)."""
    import psycopg

    steps_dir = tmp_path / "steps"
    (steps_dir / "ghost-job").mkdir(parents=True)
    env = {**os.environ, "MANAGER_TELEMETRY_TOKEN_FILE": str(steps_dir / "ghost-job" / "token")}
    ghost = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env, start_new_session=True)
    try:
        from django.db import connection

        url = postgres_server.url.rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]  # the test database
        ctx = Context(url, steps_dir, None, "", "", 1, 1)
        with psycopg.connect(url, autocommit=True) as db:
            found = check_local_workloads(db, ctx)
    finally:
        os.killpg(ghost.pid, signal.SIGKILL)
        ghost.wait()
    assert found == [f"process [{ghost.pid}] runs for ghost-job, which is no step's current run"], json.dumps(found)


def test_the_names_the_checker_reads_are_the_products():
    """The checker reads tables and state names with SQL (chaos/targets.py): they must be the product's."""
    from chaos import targets

    assert targets.check_schema_names() == []
