"""`manage.py arango_resync` rebuilds the mirror from PostgreSQL, idempotently."""
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from mirror import arango
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from queues.models import StepState, TelemetryEvent
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def without_versions(snapshot):
    return {name: {k: {f: v for f, v in doc.items() if f != "version"} for k, doc in docs.items()}
            for name, docs in snapshot.items()}


@pytest.fixture
def two_pipelines(historical_payload, realtime_payload):
    hist, _ = queue_create(payload=historical_payload, queue_id="hist-resync")
    rt, _ = queue_create(payload=realtime_payload, queue_id="rt-resync")
    for step in hist.steps.all():
        step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
        TelemetryEvent.objects.create(queue=hist, step=step, event_key=f"resync-{step.pk}", status="started",
                                      producer=step.telemetry_id, payload={"status": "started"})
    return hist, rt


def resync(*args):
    out = StringIO()
    call_command("arango_resync", *args, stdout=out)
    return out.getvalue()


def test_it_reproduces_the_documents_the_drain_wrote(mirror, two_pipelines):
    mirror_drain()
    before = assert_mirror_matches_postgres(mirror)

    output = resync("--truncate")

    after = assert_mirror_matches_postgres(mirror)
    assert without_versions(after) == without_versions(before)
    assert "queues: 2" in output and "steps: 13" in output and "telemetry: 6" in output
    assert "removed: 0" in output and "rebuilt" in output
    assert without_versions(mirror.snapshot()) == without_versions(after)
    resync()  # again, without truncating: same documents
    assert without_versions(mirror.snapshot()) == without_versions(after)


def test_it_rebuilds_a_mirror_that_missed_changes_and_removes_strays(mirror, two_pipelines):
    MirrorOutbox.objects.all().delete()  # as if the mirror had been off
    db = arango.connect()
    db.collection("queues").insert({"_key": "stray", "status": "running", "version": 1})
    db.collection("collections").insert({"_key": "old_collection", "name": "old_collection"})

    output = resync()

    assert "removed: 2" in output
    assert_mirror_matches_postgres(mirror)


def test_it_refuses_to_run_when_the_mirror_is_off(settings):
    settings.ARANGO_ENABLED = False
    with pytest.raises(CommandError, match="ARANGO_URL"):
        resync()


def test_it_reports_an_unreachable_arango(mirror, two_pipelines):
    mirror.go_down()
    with pytest.raises(CommandError, match="unavailable"):
        resync()
