"""Anonymous `/metrics` and `/health/ready` answers are cached for OPS_CACHE_SECONDS (issue #10 §5).

A flood of scrapes or probes costs at most one set of database aggregates and dependency checks per
interval and process. The clock is the cache's own (`ops.snapshot._clock`), moved by the tests, so
nothing here waits for real time to pass.
"""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ops import exposition, health, snapshot

SCRAPES = 12


@pytest.fixture
def clock(monkeypatch):
    """A settable clock for the cache, starting at an arbitrary instant."""
    now = [1000.0]
    monkeypatch.setattr(snapshot, "_clock", lambda: now[0])
    return now


@pytest.fixture
def fresh_caches():
    exposition.STATE_SNAPSHOT.clear()
    health.READY_SNAPSHOT.clear()
    yield
    exposition.STATE_SNAPSHOT.clear()
    health.READY_SNAPSHOT.clear()


@pytest.fixture
def counted_checks(monkeypatch):
    """Replaces the database and broker checks with counting ones that still do the real check."""
    calls = {"database": 0, "broker": 0}

    def counting(name, check):
        def wrapper():
            calls[name] += 1
            check()

        return wrapper

    monkeypatch.setattr(health, "check_database", counting("database", health.check_database))
    monkeypatch.setattr(health, "check_broker", counting("broker", health.check_broker))
    return calls


def aggregate_queries(captured) -> list[str]:
    """The scrape-time GROUP BY queries of the state metrics (steps by state, queues by status)."""
    return [q["sql"] for q in captured.captured_queries if "GROUP BY" in q["sql"].upper()]


@pytest.mark.django_db
def test_it_runs_the_metrics_aggregates_once_for_a_flood_of_scrapes(client, settings, clock, fresh_caches):
    """Issue #10 §5 (/metrics cached): N scrapes in a row → the database aggregates run once."""
    settings.OPS_CACHE_SECONDS = 5
    with CaptureQueriesContext(connection) as captured:
        bodies = [client.get("/metrics") for _ in range(SCRAPES)]
    assert all(response.status_code == 200 for response in bodies)
    assert all(b"streamforge_steps" in response.content for response in bodies)
    assert len(aggregate_queries(captured)) == 2  # one per table, once for all the scrapes


@pytest.mark.django_db
def test_it_reads_the_metrics_again_once_the_interval_has_passed(client, settings, clock, fresh_caches, historical_payload):
    """Issue #10 §5 (/metrics cached): the cache lasts OPS_CACHE_SECONDS, then the state is read afresh."""
    from jobs.submission import queue_create

    settings.OPS_CACHE_SECONDS = 5
    before = client.get("/metrics").content
    queue_create(payload=historical_payload, user=None, source="api")
    clock[0] += 4.9
    assert client.get("/metrics").content.count(b'streamforge_queues{status="running"} 1.0') == 0
    clock[0] += 0.2
    with CaptureQueriesContext(connection) as captured:
        after = client.get("/metrics").content
    assert len(aggregate_queries(captured)) == 2
    assert b'streamforge_queues{status="running"} 1.0' in after and after != before  # advanced on submission


@pytest.mark.django_db
def test_it_reads_the_metrics_on_every_scrape_when_caching_is_off(client, settings, fresh_caches):
    """Issue #10 §5 (/metrics cached): OPS_CACHE_SECONDS=0 switches the cache off."""
    settings.OPS_CACHE_SECONDS = 0
    with CaptureQueriesContext(connection) as captured:
        for _ in range(3):
            client.get("/metrics")
    assert len(aggregate_queries(captured)) == 6


@pytest.mark.django_db
def test_it_runs_the_readiness_checks_once_for_a_flood_of_probes(client, settings, clock, fresh_caches, counted_checks):
    """Issue #10 §5 (/health/ready cached): N probes in a row → each dependency check runs once."""
    settings.OPS_CACHE_SECONDS = 5
    responses = [client.get("/health/ready") for _ in range(SCRAPES)]
    assert all(response.status_code == 200 for response in responses)
    assert all(response.json()["checks"]["database"]["ok"] for response in responses)
    assert counted_checks == {"database": 1, "broker": 1}

    clock[0] += 5.1
    assert client.get("/health/ready").status_code == 200
    assert counted_checks == {"database": 2, "broker": 2}


@pytest.mark.django_db
def test_it_caches_an_unready_answer_with_its_status(client, settings, clock, fresh_caches, monkeypatch):
    """Issue #10 §5 (/health/ready cached): a failing check is cached too, still answered 503."""
    settings.OPS_CACHE_SECONDS = 5
    calls = []

    def broken():
        calls.append(1)
        raise ConnectionError("refused")

    monkeypatch.setattr(health, "check_broker", broken)
    statuses = [client.get("/health/ready").status_code for _ in range(SCRAPES)]
    assert statuses == [503] * SCRAPES and len(calls) == 1
