"""Claims on command_ids: how a queue-control command acts exactly once (issue #10 §3).

A consumer claims a command_id before acting: `INSERT … ON CONFLICT DO NOTHING` in a transaction of
its own, so of two consumers receiving the same id at once exactly one wins and the other sees the
claim (never an IntegrityError inside its own transaction). The winner records the outcome on the
claimed row in the same transaction as the action, so the row says what happened or nothing did.

A claim still `processing` means its owner is acting, or died (SIGKILL, OOM) or lost the database
before it could record an outcome. The claim names its owner's database session (backend pid and
start time): once that session is gone, the owner cannot be acting any more, so the next delivery
takes the claim over — the redelivery after a consumer's death is usually the only one, and
answering it `duplicate` would lose the command. The session ends a moment after its client: the
backend has to read the closed connection (or finish the statement it was running) and exit, so a
delivery finding the owner's session still listed waits OWNER_EXIT_WAIT for it to end or record an
outcome before answering `duplicate`. After CLAIM_LEASE any claim may be taken over (an
owner stuck behind a pooler whose session we cannot see). The outcome is written only by the claim's
current owner (the claim time is the fencing token), so a late original rolls back.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from kafkabus.models import ProcessedCommand

PROCESSING = "processing"
# Far beyond any command's action (one short database transaction), short enough that a command
# whose claim could not be released (database gone mid-action) is acted on after a restart.
CLAIM_LEASE = timedelta(minutes=5)
# A killed consumer's session left pg_stat_activity within 5 ms on a loaded 2-core host (200 tries),
# or once the statement it was running ended (an action is one short transaction); an owner still
# listed after this is taken as alive. A live owner usually records its outcome within it: answered.
OWNER_EXIT_WAIT = 1.0  # seconds
OWNER_POLL = 0.02  # seconds


class ClaimLost(Exception):
    """The claim was taken over (its lease ran out) before this owner recorded an outcome."""


# While `processing`, the claim's `ack` names its owner's session; the outcome replaces it.
_OWNER = "jsonb_build_object('owner_pid', pg_backend_pid(), 'owner_start', " \
         "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()))"
# The owner's session no longer exists: it cannot be acting. (A session of another role whose start
# time this role may not read counts as alive: then only the lease frees the claim.)
_OWNER_GONE = "NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = (c.ack->>'owner_pid')::int " \
              "AND (a.backend_start IS NULL OR a.backend_start = (c.ack->>'owner_start')::timestamptz))"


def command_claim(*, command_id: str, command: str) -> datetime | None:
    """Claim `command_id`; returns the claim's token (its time) if this caller won, None otherwise.

    While the claim is `processing` under an owner whose session is still listed, tries again for up to
    OWNER_EXIT_WAIT: each try is a transaction of its own, as PostgreSQL keeps the pg_stat_activity a
    transaction first read until it ends."""
    deadline = time.monotonic() + OWNER_EXIT_WAIT
    while True:
        token, undecided = _claim_try(command_id=command_id, command=command)
        if token is not None or not undecided or time.monotonic() >= deadline:
            return token
        time.sleep(OWNER_POLL)


def _claim_try(*, command_id: str, command: str) -> tuple[datetime | None, bool]:
    """One try: (our token, False) if won; (None, whether the claim is still without an outcome) if not."""
    now = timezone.now()
    table = ProcessedCommand._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (command_id, command, status, queue_id, ack, received_at) "
            f"VALUES (%s, %s, %s, '', {_OWNER}, %s) ON CONFLICT (command_id) DO NOTHING RETURNING id",
            [command_id, command, PROCESSING, now],
        )
        if cursor.fetchone() is not None:
            return now, False
        # Taken over when its owner is gone or its lease ran out; of two deliveries doing this at once,
        # the second's UPDATE sees the first's new owner (alive) and time, and takes nothing.
        cursor.execute(
            f"UPDATE {table} c SET received_at = %s, ack = {_OWNER} WHERE c.command_id = %s AND c.status = %s "
            f"AND (c.received_at < %s OR {_OWNER_GONE}) RETURNING c.id",
            [now, command_id, PROCESSING, now - CLAIM_LEASE],
        )
        if cursor.fetchone() is not None:
            return now, False
        # Still processing, or released since the INSERT (the next try wins it).
        cursor.execute(f"SELECT status FROM {table} WHERE command_id = %s", [command_id])
        row = cursor.fetchone()
    return None, row is None or row[0] == PROCESSING


def command_outcome_record(*, command_id: str, token: datetime, ack) -> None:
    """Write the outcome on our claim (inside the action's transaction); ClaimLost if it is not ours."""
    updated = ProcessedCommand.objects.filter(command_id=command_id, status=PROCESSING, received_at=token).update(
        status=ack.status, queue_id=(ack.queue_id or "")[:40], ack=ack.as_event()
    )
    if not updated:
        raise ClaimLost(command_id)


def command_claim_release(*, command_id: str, token: datetime) -> None:
    """Give the claim up (the action did not happen), so a redelivery can act."""
    ProcessedCommand.objects.filter(command_id=command_id, status=PROCESSING, received_at=token).delete()


def command_claim_get(*, command_id: str) -> ProcessedCommand | None:
    return ProcessedCommand.objects.filter(command_id=command_id).first()
