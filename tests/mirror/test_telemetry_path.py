"""Telemetry ingested in bulk (jobs.telemetry.ingest_events) reaches the mirror like any other change."""
import pytest

from jobs.telemetry import ingest_events
from mirror.sync import mirror_drain
from queues.models import StepState
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def test_it_mirrors_events_and_progress_written_by_ingestion(mirror, historical_payload):
    queue, _ = queue_create(payload=historical_payload)
    loader = queue.steps.get(name="loader-producer-api-trades")
    loader.transition(StepState.PENDING, from_states=[StepState.WAITING])
    mirror_drain()
    events = [
        {"event": "started", "queue_id": queue.queue_id, "producer": loader.telemetry_id, "timestamp": 1},
        {"status": "loading", "queue_id": queue.queue_id, "telemetry_id": loader.telemetry_id, "message_count": 700, "sent_at": 2},
    ]
    result = ingest_events(events)
    assert result.accepted == 2
    mirror_drain()
    actual = assert_mirror_matches_postgres(mirror)
    step_doc = actual["steps"][f"{queue.queue_id}__{loader.name}"]
    assert step_doc["state"] == StepState.RUNNING
    assert step_doc["records_written"] == 700
    assert len(actual["telemetry"]) == 2
