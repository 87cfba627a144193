"""A command whose consumer died between claiming it and recording the outcome is acted on when it is
delivered again (issue #14, R1 kill -9 of a control consumer, seed 1814: `command r1-1814-start-37 left
processing`, the queue was never created — the redelivery answered `duplicate` to a dead claim)."""
from __future__ import annotations

import threading
import time

import pytest

from consumers import control
from kafkabus.claims import PROCESSING, command_claim, command_outcome_record
from kafkabus.models import ProcessedCommand
from queues.models import Queue

pytestmark = pytest.mark.django_db(transaction=True)


def _claim_in_another_session(command_id: str, *, then_die: bool, hold: threading.Event | None = None,
                              statement: str = "") -> threading.Thread:
    """What a consumer process does up to the kill: claim in a database session of its own; then it
    dies (its session ends without recording anything) or stays alive acting until `hold` is set.
    `statement` is one the consumer had sent when it was killed: its backend runs it to the end
    before it reads that its client is gone, so the session outlives the consumer for that long."""
    from django.db import connection

    def owner():
        try:
            assert command_claim(command_id=command_id, command="start") is not None
            if hold is not None:
                claimed.set()
                hold.wait(60)
            if statement:
                connection.connection.pgconn.send_query(statement.encode())
        finally:
            connection.close()  # SIGKILL: the client just goes, nothing recorded

    claimed = threading.Event()
    thread = threading.Thread(target=owner)
    thread.start()
    if then_die:
        thread.join(60)
    else:
        assert claimed.wait(60)
    return thread


def test_a_start_claimed_by_a_consumer_that_died_is_acted_on_when_redelivered(historical_payload):
    """R1 (kill -9 of a control consumer mid-command): the redelivered start creates the queue once."""
    _claim_in_another_session("c-orphan", then_die=True)
    assert ProcessedCommand.objects.get(command_id="c-orphan").status == PROCESSING

    ack = control.handle_command({"command": "start", "command_id": "c-orphan", "queue_id": "q-orphan",
                                  **historical_payload})

    assert (ack.status, ack.duplicate) == ("accepted", False), ack
    assert Queue.objects.filter(queue_id="q-orphan").count() == 1
    assert ProcessedCommand.objects.get(command_id="c-orphan").status == "accepted"
    again = control.handle_command({"command": "start", "command_id": "c-orphan", "queue_id": "q-orphan",
                                    **historical_payload})
    assert again.duplicate is True and Queue.objects.filter(queue_id="q-orphan").count() == 1


def test_a_start_whose_dead_consumer_s_session_ends_a_moment_later_is_acted_on(historical_payload):
    """The redelivery can come before the dead consumer's session has ended (its backend finishing a
    statement, or not yet scheduled to read the closed connection on a busy host): it must not answer
    `duplicate` because the session was still listed for that moment (the same lost command as R1)."""
    _claim_in_another_session("c-late", then_die=True, statement="SELECT pg_sleep(0.3)")

    ack = control.handle_command({"command": "start", "command_id": "c-late", "queue_id": "q-late",
                                  **historical_payload})

    assert (ack.status, ack.duplicate) == ("accepted", False), ack
    assert Queue.objects.filter(queue_id="q-late").count() == 1


def test_a_claim_whose_owner_is_alive_is_not_taken_over(historical_payload):
    """The other side: while the owner's session lives (it is acting), a redelivery answers duplicate
    (once OWNER_EXIT_WAIT has passed without the session ending or an outcome recorded)."""
    hold = threading.Event()
    owner = _claim_in_another_session("c-busy", then_die=False, hold=hold)
    try:
        ack = control.handle_command({"command": "start", "command_id": "c-busy", "queue_id": "q-busy",
                                      **historical_payload})
        assert ack.duplicate is True and ack.status == PROCESSING, ack
        assert not Queue.objects.filter(queue_id="q-busy").exists()
    finally:
        hold.set()
        owner.join(60)


def test_a_redelivery_while_the_owner_acts_answers_the_outcome_the_owner_records(historical_payload):
    """A live owner recording its outcome while the redelivery waits for it: the redelivery answers that
    outcome (`duplicate`), not `processing`, and does not act."""
    from django.db import connection

    claimed = threading.Event()

    def owner():
        try:
            token = command_claim(command_id="c-acting", command="start")
            claimed.set()
            time.sleep(0.2)  # acting
            command_outcome_record(command_id="c-acting", token=token, ack=control.Ack(
                "start", "c-acting", "accepted", queue_id="q-acting", created=True))
        finally:
            connection.close()

    thread = threading.Thread(target=owner)
    thread.start()
    assert claimed.wait(60)
    ack = control.handle_command({"command": "start", "command_id": "c-acting", "queue_id": "q-acting",
                                  **historical_payload})
    thread.join(60)

    assert (ack.status, ack.duplicate, ack.queue_id) == ("accepted", True, "q-acting"), ack
    assert not Queue.objects.filter(queue_id="q-acting").exists()  # only the owner acts (here: records)
