"""Audit records of refused requests whose text holds NUL characters (issue #14, found by the chaos suite's
R4 API fuzzing, seed 1814): PostgreSQL text cannot store NUL, so recording the refusal failed with a
DataError and the client got a 500 instead of its 400."""
from __future__ import annotations

import pytest

from consumers import control
from queues.history import AuditEntry
from tests.queues.factories import payload

pytestmark = pytest.mark.django_db


def test_an_api_start_with_nul_in_a_field_name_is_refused_with_400_and_audited(api):
    """R4 case: an unknown field whose name holds NUL (and a queue_id with NUL) → 400, recorded without NUL."""
    body = {**payload(), "queue_id": "audit-nul\x00-1", "bad\x00field": 1}
    response = api.post("/api/queues/", body, format="json")
    assert response.status_code == 400, response.content[:300]
    entry = AuditEntry.objects.get(result="rejected")
    assert "\x00" not in entry.reason and "bad" in entry.reason
    assert "\x00" not in entry.queue_ref


def test_a_kafka_start_with_nul_in_a_field_name_is_rejected_and_audited():
    """The same class of input on Kafka: the command is rejected (not an error that stops the consumer)."""
    command = {"command": "start", "command_id": "audit-nul-2", **payload(), "bad\x00field": 1}
    assert control.handle_command(command).status == "rejected"
    entry = AuditEntry.objects.get(command_id="audit-nul-2")
    assert entry.result == "rejected" and "\x00" not in entry.reason
