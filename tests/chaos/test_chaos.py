"""The CI subset of the fault-injection suite (issue #14): small loads of R3 and R7, one kill -9 of a
consumer and of a worker, each ending with the invariant check; and the checker's own tests (it
must see a violation when there is one). The full suite is `make chaos` (README *Reliability*)."""
from __future__ import annotations

import json
import os
import re
import shutil
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
    base = tmp_path_factory.mktemp("chaos")
    yield Run(seed=SEED, scale=0.01, servers=servers, base=base)
    # The systems' logs and step folders (pytest would keep them for three sessions); the processes
    # were stopped by each scenario's `with system`. CHAOS_KEEP=1 keeps the folder to read the logs.
    if not os.environ.get("CHAOS_KEEP"):
        shutil.rmtree(base, ignore_errors=True)


def _assert_all_stop_requested(result, queues: int) -> None:
    """Every queue was stopped through Kafka: stopped, or `stopping` where a first step (launching since
    the submission) reported running through the harness's telemetry — with no worker here, nothing sends
    its stop command or forces its end."""
    assert set(result.outcome) <= {"stopped", "stopping"} and sum(result.outcome.values()) == queues, result.line()


def test_it_dead_letters_every_hostile_message_and_applies_every_valid_one(chaos_run):
    """R3: hostile messages interleaved with valid traffic on both topics; consumers stay up."""
    result = scenario_hostile.run(chaos_run)
    assert result.violations == [], result.line()
    _assert_all_stop_requested(result, scenario_hostile.QUEUES)


def test_it_records_each_concurrent_start_once(chaos_run):
    """R7: concurrent clients against gunicorn: one queue per id, 200 for repeats, 409 for conflicts, no 5xx."""
    result = scenario_clients.run(chaos_run)
    assert result.violations == [], result.line()


def test_it_recovers_from_kill_9_of_the_web_server_a_consumer_and_a_worker(chaos_run):
    """R1 (small): queues through API and Kafka while the web server, an events consumer and a Celery worker are
    SIGKILLed. The web server first: the harness must restart it on time while its own API calls wait for it
    (it once restarted victims only between calls, so each later start waited 60 s and failed with 599)."""
    result = scenario_storm.run(chaos_run, window=30, victims=("web", "events-1", "worker-1"),
                                layout=Layout(workers=2, beats=2, control=1, events=2, web_workers=1))
    assert [f.split("@")[0] for f in result.faults] == ["kill -9 web", "kill -9 events-1", "kill -9 worker-1"], \
        result.line()
    assert result.violations == [], result.line()
    assert sum(result.outcome.values()) >= 4 and set(result.outcome) <= {"succeeded", "stopped"}, result.line()


def test_it_recovers_from_kill_9_on_the_kubernetes_emulator(chaos_run):
    """R1k (small): the storm with JOB_LAUNCHER=kubernetes on the emulator (the harness plays the Job controller
    and the pods' workers, which report progress on Kafka) while a worker, a control consumer and an events
    consumer are SIGKILLed: no step run with two Jobs, no live Job without a live step, progress counted once."""
    result = scenario_storm.run_kube(chaos_run, window=30, victims=("worker-1", "control-1", "events-1"),
                                     layout=Layout(workers=2, beats=2, control=2, events=1, web_workers=1))
    assert result.scenario == "R1k", result.line()
    assert [f.split("@")[0] for f in result.faults] == ["kill -9 worker-1", "kill -9 control-1", "kill -9 events-1"], \
        result.line()
    assert result.violations == [], result.line()
    assert sum(result.outcome.values()) >= 4 and set(result.outcome) <= {"succeeded", "stopped"}, result.line()
    reported = int(re.search(r"(\d+) events from the Jobs' workers", result.load).group(1))
    assert reported > 0, result.line()


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


# -- R4/R5/R6: their checkers and the emulators' fault controls (the scenarios need minutes: `make chaos`) --

def test_the_fuzz_checker_lets_anonymous_404s_pass_only_for_unroutable_paths():
    """R4: an anonymous 404 passes only where no route matches (empty, '/' or a format suffix '.')."""
    from chaos.scenario_fuzz import _unroutable

    assert _unroutable({"queue_id": ""}) and _unroutable({"queue_id": "a/b"}) and _unroutable({"queue_id": "a.json"})
    assert not _unroutable({"queue_id": "fuzz-q"}) and not _unroutable({"queue_id": "x", "name": "step-1"})


def test_the_mirror_comparison_finds_missing_extra_and_stale_documents():
    """R5: a document missing, one ArangoDB has alone, one with another status or updated_at are differences."""
    from datetime import datetime, timezone

    from chaos.scenario_mirror import _diff

    at = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
    rows = {"a": {"status": "running", "updated_at": at}, "b": {"status": "stopped", "updated_at": at},
            "c": {"status": "failed", "updated_at": at}}
    docs = {"a": {"status": "running", "updated_at": at.isoformat()}, "b": {"status": "running", "updated_at": at.isoformat()},
            "d": {"status": "running", "updated_at": at.isoformat()}}
    found = sorted(_diff("queue", rows, docs))
    assert found == ["queue b status: stopped in PostgreSQL, running in ArangoDB", "queue c missing in ArangoDB",
                     "queue d in ArangoDB only"], found
    assert _diff("queue", {"a": rows["a"]}, {"a": {"status": "running", "updated_at": "2024-06-01T12:00:00"}}) != []


@pytest.fixture
def kube_emulator(tmp_path):
    from chaos import emulators

    with emulators.kube(tmp_path) as kube:
        yield kube


def _job(name: str, run: str = "1") -> dict:
    from chaos import targets

    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {
        targets.JOB_LABEL_QUEUE: "q1", targets.JOB_LABEL_STEP: "s1", targets.JOB_LABEL_RUN: run}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}


def _kube_api(kube, method: str, path: str, body=None) -> tuple[int, dict]:
    import urllib.error

    try:
        return 200, kube.control(method, path, body, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_kube_emulator_injects_seeded_faults_on_its_api_only(kube_emulator):
    """R6 (emulator): a 409 fault still creates the Job (the answer is what a retry would meet); a 429
    carries Retry-After; a refused listener comes back with its data; the control surface is never hit."""
    import urllib.error

    jobs = "/apis/batch/v1/namespaces/chaos/jobs"
    kube_emulator.control("POST", "/_emulator/faults", {"seed": 1, "rate": 1.0, "kinds": ["409"]})
    status, body = _kube_api(kube_emulator, "POST", jobs, _job("j1"))
    assert (status, body["reason"]) == (409, "AlreadyExists"), body
    kube_emulator.control("POST", "/_emulator/faults", {"seed": 1, "rate": 1.0, "kinds": ["429"]})
    try:
        kube_emulator.control("GET", jobs)
        raise AssertionError("no fault injected")
    except urllib.error.HTTPError as exc:
        assert (exc.code, exc.headers["Retry-After"]) == (429, "1")
    kube_emulator.control("POST", "/_emulator/faults", {"seed": 1, "rate": 1.0, "kinds": ["refuse"], "refuse_seconds": 1})
    with pytest.raises(OSError):
        kube_emulator.control("GET", jobs)
    # The control surface waits until the listener is back (R6 crashed turning faults off while closed).
    report = kube_emulator.control("DELETE", "/_emulator/faults")
    assert report == {"rate": 0.0, "kinds": [], "injected": {"refuse": 1}}, report
    assert [j["name"] for j in kube_emulator.control("GET", "/_emulator/jobs?namespace=chaos")["items"]] == ["j1"]
    assert len(kube_emulator.control("GET", "/_emulator/created")["items"]) == 1


@pytest.mark.django_db
def test_the_kube_checker_finds_two_jobs_for_one_step_run_and_a_job_without_a_step(kube_emulator, postgres_server):
    """R6 (checker): two Jobs ever created for one step run, and a live Job no step owns, are violations."""
    from django.db import connection

    from chaos.scenario_kube import check_jobs

    jobs = "/apis/batch/v1/namespaces/chaos/jobs"
    for name in ("j1", "j1-again"):
        assert _kube_api(kube_emulator, "POST", jobs, _job(name))[0] == 200
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    found = check_jobs(kube_emulator, url)
    assert found[0] == "1 step runs got more than one Job, e.g. [(('q1', 's1', '1'), 2)]", found
    assert found[1:] == ["Job j1 is live but its step is gone", "Job j1-again is live but its step is gone"], found


@pytest.mark.django_db(transaction=True)  # committed: the checker reads over a connection of its own
def test_the_kube_checker_finds_a_running_step_without_a_job(kube_emulator, postgres_server, historical_payload):
    """R1k/R6 (checker): a step the database says is `running` while no live Job exists for it is a violation
    (the issue: no `running` step without a workload)."""
    from django.db import connection

    from chaos.scenario_kube import check_jobs
    from jobs.submission import queue_create

    queue, _ = queue_create(payload=historical_payload)
    step = queue.steps.order_by("position").first()
    type(step).objects.filter(pk=step.pk).update(state="running", job_name="ghost-run")
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    found = check_jobs(kube_emulator, url)
    assert f"step {queue.queue_id}/{step.name} is running without a Job" in found, found


# -- R2: the broker gone mid-stream ------------------------------------------------------------------

def test_it_survives_the_broker_going_away_mid_stream(chaos_run):
    """R2 (small): telemetry and commands flow while every connection to the broker is dropped and refused for
    seconds; the consumers and producers reconnect by themselves (no process restarted), every valid event is
    stored once with records_written as sent, every command acted on once, nothing dead-lettered."""
    from chaos import scenario_broker

    result = scenario_broker.run(chaos_run, window=15, outages=1)
    assert len(result.faults) == 1 and result.faults[0].startswith("broker unreachable@"), result.line()
    assert result.violations == [], result.line()
    started_by_kafka = chaos_run.n(scenario_broker.FULL_STARTS, 2)
    _assert_all_stop_requested(result, scenario_broker.QUEUES + started_by_kafka)


def test_the_broker_link_drops_every_connection_and_refuses_new_ones_until_opened():
    """R2 (fault injector): a cut closes the connections through the relay (the client reads EOF or a reset)
    and refuses new ones; after open() the same port relays again."""
    import socket
    import threading

    from chaos.scenario_broker import BrokerLink
    from devtools.process import free_port

    echo = socket.create_server(("127.0.0.1", free_port()))

    def serve():
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(1024), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    link = BrokerLink(echo.getsockname()[1])
    link.open()
    try:
        client = socket.create_connection(("127.0.0.1", link.port), timeout=10)
        client.sendall(b"ping")
        assert client.recv(16) == b"ping"
        assert link.cut() == 1
        try:
            assert client.recv(16) == b""  # EOF ...
        except ConnectionResetError:
            pass  # ... or a reset: either way the connection is gone
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", link.port), timeout=10)
        link.open()
        again = socket.create_connection(("127.0.0.1", link.port), timeout=10)
        again.sendall(b"pong")
        assert again.recv(16) == b"pong"
    finally:
        link.close()
        echo.close()


@pytest.mark.django_db(transaction=True)
def test_the_checker_takes_coalesced_progress_and_finds_lost_reports_and_events(postgres_server):
    """Invariant (telemetry, issue #12): progress reports coalesced into one row per step per batch pass
    (each step they were sent to has rows standing for as many reports); a lifecycle event not stored
    and a step whose progress reports are missing are reported."""
    import psycopg
    from django.db import connection

    from chaos.invariants import check_telemetry
    from jobs.telemetry import ingest_events
    from queues.models import QueueRequest
    from tests.queues.factories import make_queue

    queue = make_queue(queue_id="chaos-tel-q")
    QueueRequest.objects.filter(queue=queue).update(state="running")
    loader, other = [(queue.queue_id, s.telemetry_id) for s in queue.steps.order_by("position")[:2]]
    ledger = Ledger()
    batch = []
    for n, status in enumerate(["loading", "progress", "loading", "started", "loading"]):
        chaos_id = f"c-{n}"
        batch.append({"event": status, "queue_id": loader[0], "producer": loader[1], "records_written": n + 1,
                      "chaos_id": chaos_id})
        ledger.record_telemetry(chaos_id, *loader, n + 1, status)
    assert ingest_events(batch).accepted == 5
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]  # the test database
    ctx = Context(url, None, None, "", "", 1, 1)
    with psycopg.connect(url, autocommit=True) as db:
        assert check_telemetry(db, ctx, ledger) == []
        ledger.record_telemetry("c-lost", *other, None, "progress")
        ledger.record_telemetry("c-lost-too", *loader, None, "loading")
        ledger.record_telemetry("c-finished", *loader, None, "finished")
        found = check_telemetry(db, ctx, ledger)
    assert found[0] == "1 valid telemetry events not applied, e.g. ['c-finished']", found
    assert found[1].startswith("2 steps have fewer progress reports stored than sent to them"), found
