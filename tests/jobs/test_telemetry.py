"""Telemetry ingestion (jobs.telemetry.ingest_events): how worker events move steps (DESIGN §5–§6).

Fast DB-level tests: on_commit callbacks (queue_advance) do not fire inside the `db` fixture.
"""
from __future__ import annotations

import pytest

from jobs.telemetry import ingest_events
from queues.models import QueueRequest, StepState, TelemetryEvent
from jobs.services import step_stop
from tests.queues.factories import make_queue
from tests.jobs.helpers import put, step_of

pytestmark = pytest.mark.django_db

CONNECTOR = ("arango-connector", "api_candles_5m")
LOADER = ("loader-producer", "api_candles_5m")
TRAINER = ("gnn-trainer", "gnn_train")


@pytest.fixture
def queue():
    return make_queue(queue_id="tel-q")




def _event(step: QueueRequest, status: str, **fields) -> dict:
    return {"event": status, "queue_id": step.queue.queue_id, "producer": step.telemetry_id, **fields}


@pytest.mark.parametrize("before", [StepState.LAUNCHING, StepState.PENDING])
def test_it_moves_a_launched_step_to_running_on_started(queue, before):
    step = put(step_of(queue, CONNECTOR), before)
    result = ingest_events([_event(step, "started", timestamp=1)])
    step.refresh_from_db()
    assert result.accepted == 1 and step.queue_id in result.changed_queues
    assert step.state == StepState.RUNNING
    assert step.started_at is not None
    assert step.reported_status == "started"


def test_it_enqueues_a_queue_advance_when_a_state_changed(queue, django_capture_on_commit_callbacks):
    step = put(step_of(queue, CONNECTOR), StepState.PENDING)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        ingest_events([_event(step, "started")])
    assert len(callbacks) >= 1  # the queue_advance of this queue (nothing is sent: not executed)


def test_it_records_growing_progress_while_loading(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    for n, records in enumerate([10, 250, 1000]):
        ingest_events([_event(step, "loading", records_written=records, timestamp=n)])
        step.refresh_from_db()
        assert step.records_written == records
    assert step.state == StepState.RUNNING
    assert step.last_progress_at is not None and step.last_event_at is not None


def test_it_never_lowers_records_written(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    ingest_events([_event(step, "loading", records_written=500, timestamp=2)])
    ingest_events([_event(step, "loading", records_written=120, timestamp=1)])  # late and lower
    step.refresh_from_db()
    assert step.records_written == 500
    # Within one batch too: the highest count wins whatever the order.
    ingest_events([_event(step, "loading", records_written=900, timestamp=4),
                   _event(step, "loading", records_written=700, timestamp=3)])  # fmt: skip
    step.refresh_from_db()
    assert step.records_written == 900


def test_it_does_not_double_count_a_duplicate(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    event = _event(step, "loading", records_written=40, timestamp=7)
    first = ingest_events([event])
    again = ingest_events([dict(event)])
    step.refresh_from_db()
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates) == (0, 1)
    assert step.records_written == 40
    assert TelemetryEvent.objects.filter(step=step).count() == 1


def test_it_succeeds_a_step_on_finished(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    ingest_events([_event(step, "finished", records_written=42, message="done")])
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED
    assert step.finished_at is not None and step.records_written == 42


def test_it_reads_finished_true_on_a_progress_event_as_finished(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    ingest_events([{"status": "progress", "finished": True, "queue_id": "tel-q", "telemetry_id": step.telemetry_id}])
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED


def test_it_fails_a_step_on_error_with_the_error_message(queue):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    ingest_events([_event(step, "error", error_message="exchange said 429")])
    step.refresh_from_db()
    assert step.state == StepState.FAILED
    assert step.message == "exchange said 429"


def test_it_notes_an_interruption_it_did_not_request_and_stops_the_step_when_it_finishes(queue):
    # E.g. a stop sent to the workers by another system, before the manager recorded it.
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING)
    ingest_events([_event(step, "interrupted", timestamp=1)])
    step.refresh_from_db()
    assert step.state == StepState.RUNNING
    assert "without a stop request" in step.message
    ingest_events([_event(step, "finished", timestamp=2)])
    step.refresh_from_db()
    assert step.state == StepState.STOPPED
    assert "did not request" in step.message


def test_it_lets_a_step_run_on_after_an_interruption_followed_by_a_restart(queue):
    # A pod evicted and run again by Kubernetes: interrupted, then started again, then a normal finish.
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING)
    ingest_events([
        _event(step, "interrupted", timestamp=1),
        _event(step, "started", timestamp=2),
        _event(step, "finished", timestamp=3),
    ])
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED


def test_it_stops_a_step_interrupted_then_finished_after_a_stop_request(queue):
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING, started_at="2024-06-01T00:00Z")
    step_stop(step=step)
    step.refresh_from_db()
    assert step.state == StepState.STOPPING
    ingest_events([_event(step, "interrupted", timestamp=1)])
    step.refresh_from_db()
    assert step.state == StepState.STOPPING  # waits for `finished` (or the grace period)
    ingest_events([_event(step, "finished", timestamp=2)])
    step.refresh_from_db()
    assert step.state == StepState.STOPPED


def test_it_succeeds_a_drained_consumer_when_it_ends(queue):
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING, records_written=0)
    ingest_events([_event(step, "loading", records_written=300)])
    step.refresh_from_db()
    from jobs.services import step_mark_stopping

    step_mark_stopping(step=step, reason="Drained: wrote 300 of 300 records.", drain=True)
    step.refresh_from_db()
    assert step.state == StepState.STOPPING and step.drain_requested_at is not None
    ingest_events([_event(step, "interrupted", timestamp=10)])
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED
    assert step.message.startswith("Drained")


@pytest.mark.parametrize("final", [StepState.SUCCEEDED, StepState.FAILED, StepState.STOPPED, StepState.LOST])
def test_it_does_not_change_a_terminal_step(queue, final):
    step = put(step_of(queue, LOADER), final, message="as it was", records_written=5)
    result = ingest_events([_event(step, "started"), _event(step, "error", error_message="late"),
                            _event(step, "finished")])  # fmt: skip
    step.refresh_from_db()
    assert step.state == final and step.message == "as it was"
    assert result.changed_queues == set()


def test_it_does_not_start_a_waiting_step_from_its_events(queue):
    step = step_of(queue, TRAINER)
    ingest_events([_event(step, "finished")])
    step.refresh_from_db()
    assert step.state == StepState.WAITING


def test_it_stores_extra_and_unknown_fields(queue):
    step = put(step_of(queue, TRAINER), StepState.RUNNING)
    raw = _event(step, "progress", extra={"epoch": 3, "loss": 0.25}, symbol="BTCUSDT", gpu="a100", sent_at=1717200000)
    ingest_events([raw])
    step.refresh_from_db()
    assert step.extra == {"epoch": 3, "loss": 0.25}
    stored = TelemetryEvent.objects.get(step=step)
    assert stored.payload["gpu"] == "a100" and stored.payload["symbol"] == "BTCUSDT"
    assert stored.sent_at is not None and stored.sent_at.year == 2024


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "loading", "records_written": 77, "timestamp": 1717200000},
        {"status": "loading", "message_count": 77, "sent_at": "2024-06-01T00:00:00Z"},
        {"status": "loading", "message_count": 77, "timestamp": "2024-06-01T00:00:00"},
    ],
)
def test_it_reads_both_field_dialects(queue, fields):
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    key = "producer" if "event" in fields else "telemetry_id"
    result = ingest_events([{"queue_id": "tel-q", key: step.telemetry_id, **fields}])
    step.refresh_from_db()
    assert result.accepted == 1 and not result.rejected
    assert step.records_written == 77
    stored = TelemetryEvent.objects.get(step=step)
    assert stored.status == "loading" and stored.records_written == 77
    assert stored.sent_at is not None and (stored.sent_at.year, stored.sent_at.month, stored.sent_at.day) == (2024, 6, 1)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("not an object", "not a JSON object"),
        ({"event": "exploded", "queue_id": "tel-q", "producer": "x"}, "status"),
        ({"event": "loading", "producer": "x"}, "queue_id"),
        ({"event": "loading", "queue_id": "tel-q"}, "producer"),
        ({"event": "loading", "queue_id": "tel-q", "producer": "x", "records_written": -1}, "records_written"),
        ({"event": "loading", "queue_id": "nope", "producer": "x"}, "unknown queue"),
        ({"event": "loading", "queue_id": "tel-q", "producer": "nobody__here"}, "unknown producer"),
    ],
)
def test_it_rejects_unusable_events_with_a_reason(queue, raw, reason):
    result = ingest_events([raw])
    assert result.accepted == 0
    assert len(result.rejected) == 1 and result.rejected[0][0] == 0
    assert reason in result.rejected[0][1]
    assert TelemetryEvent.objects.count() == 0


def test_it_rejects_an_event_the_database_cannot_store_and_keeps_the_rest(queue):
    # jsonb holds no NUL character; such an event must not block the batch (or a Kafka consumer).
    step = put(step_of(queue, CONNECTOR), StepState.RUNNING)
    result = ingest_events([
        _event(step, "loading", records_written=10, timestamp=1),
        _event(step, "loading", records_written=20, timestamp=2, message="bad \u0000 byte"),
        _event(step, "loading", records_written=30, timestamp=3, note="\ud800 lone surrogate"),
    ])
    assert result.accepted == 1
    assert sorted(index for index, _ in result.rejected) == [1, 2]
    step.refresh_from_db()
    assert step.records_written == 10


# --- issue #10 §1: one bad event never blocks the others ----------------------------------------

BIGINT_MAX = 2**63 - 1


def _deep(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels):
        value = {"next": value}
    return value


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"records_written": float("inf")}, "records_written"),  # 1e400 as Python's json reads it
        ({"records_written": float("nan")}, "records_written"),
        ({"message_count": float("-inf")}, "message_count"),
        ({"records_written": BIGINT_MAX + 1}, "records_written"),
        ({"records_written": [1, 2]}, "records_written"),
        ({"timestamp": "2024-06-31T00:00:00"}, "timestamp"),  # an impossible date
        ({"timestamp": "2024-06-01T25:00:00"}, "timestamp"),
        ({"timestamp": 1717200000 * 10**6}, "timestamp"),  # microseconds: far beyond year 9999
        ({"timestamp": float("inf")}, "timestamp"),
        ({"sent_at": {"at": 1}}, "sent_at"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"queue_id": ["tel-q"]}, "queue_id"),
        ({"producer": {"id": "x"}}, "producer"),
        ({"event": ["loading"]}, "event"),
        ({"message": ["a", "list"]}, "message"),
        ({"error_message": {"code": 1}}, "error_message"),
        ({"finished": "yes"}, "finished"),
        ({"extra": ["not", "an", "object"]}, "extra"),
        ({"extra": {"loss": float("nan")}}, "extra.loss"),
        ({"extra": _deep(40)}, "extra"),
        ({"message": "x" * 100_000}, "message"),
        ({"shard": "y" * 100_000}, "shard"),
        ({"note": "lone \ud800 surrogate"}, "note"),
        ({"run": "two"}, "run"),
        ({"run": 0}, "run"),
    ],
)
def test_it_rejects_each_kind_of_malformed_event_naming_the_field_and_applies_the_rest(queue, fields, named):
    """Issue #10 §1: non-finite numbers, numbers beyond bigint, impossible or out-of-range times, wrong
    types, very long strings and deep nesting are refused alone, with a reason naming the field."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    result = ingest_events([
        _event(step, "loading", records_written=10, timestamp=1),
        {**_event(step, "loading", records_written=20, timestamp=2), **fields},
        _event(step, "loading", records_written=30, timestamp=3),
    ])
    assert [index for index, _ in result.rejected] == [1], result.rejected
    assert named in result.rejected[0][1]
    assert result.accepted == 2
    step.refresh_from_db()
    assert step.records_written == 30


def test_it_accepts_the_largest_bigint_and_a_float_count(queue):
    """Issue #10 §1, the edge of the bigint case: the largest value PostgreSQL holds is accepted."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    result = ingest_events([_event(step, "loading", records_written=12.0, timestamp=1),
                            _event(step, "loading", records_written=BIGINT_MAX, timestamp=2)])
    assert result.accepted == 2 and not result.rejected
    step.refresh_from_db()
    assert step.records_written == BIGINT_MAX


# --- issue #10 §3: a retried step's new run does not take the old run's telemetry ------------------


def test_it_counts_identical_events_of_two_runs_each_for_its_own_run(queue):
    """Issue #10 §3 (run in the dedupe key): a worker that does not send its run reports the same body
    in run 1 and run 2; both count, each for the run current when it arrives."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    body = _event(step, "loading", records_written=50)
    assert ingest_events([dict(body)]).accepted == 1
    step = put(step, StepState.RUNNING, run=2, records_written=0)  # as after a retry and a new launch
    second = ingest_events([dict(body)])
    assert (second.accepted, second.duplicates) == (1, 0)
    step.refresh_from_db()
    assert step.records_written == 50
    assert sorted(TelemetryEvent.objects.filter(step=step).values_list("run", flat=True)) == [1, 2]
    # With the run sent by the worker, the same holds.
    assert ingest_events([{**body, "run": 2}]).accepted == 1
    assert ingest_events([{**body, "run": 2}]).duplicates == 1


def test_it_ignores_a_late_event_of_an_earlier_run(queue):
    """Issue #10 §3 (late events): run 1's `finished` arriving during run 2 changes nothing in run 2."""
    step = put(step_of(queue, LOADER), StepState.RUNNING, run=2, records_written=10)
    result = ingest_events([_event(step, "finished", records_written=999, run=1, timestamp=5)])
    assert not result.rejected
    step.refresh_from_db()
    assert step.state == StepState.RUNNING and step.records_written == 10
    assert result.changed_queues == set()
    stored = TelemetryEvent.objects.get(step=step)  # kept for the history of run 1
    assert stored.run == 1
    # Run 2's own events still apply.
    ingest_events([_event(step, "finished", records_written=20, run=2)])
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED and step.records_written == 20


def test_it_rejects_an_event_of_a_run_that_has_not_started(queue):
    """Issue #10 §3: a run beyond the step's current one cannot exist yet; refused, naming `run`."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    result = ingest_events([_event(step, "loading", records_written=5, run=2)])
    assert result.accepted == 0 and "run" in result.rejected[0][1]


def test_it_tells_each_run_of_a_step_its_number_to_send_back(queue):
    """Issue #10 §3: workers learn their run from STEP_RUN (Kubernetes Job and local process alike)."""
    from jobs.environment import step_environment

    step = put(step_of(queue, LOADER), StepState.WAITING, run=2)
    assert step_environment(step)["STEP_RUN"] == "2"
