"""Issue #12 mirror (seen in `make bench` mirror_lag): "deadlock detected ... while updating tuple in relation
mirror_mirroroutbox". The drain's finish (delete the rows it wrote, release the others) locked its rows in
its own order while a writer's transaction locked outbox rows in another; each waited for the other and
PostgreSQL aborted one of them — the drain, or the application's own transaction."""
import threading

import psycopg
import pytest
from django.db import connection, connections

from jobs.submission import queue_create
from mirror import arango, outbox, sync
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from tests.helpers import wait_until

from .helpers import assert_mirror_matches_postgres



def _waiting_for_a_lock(writer_pid: int) -> bool:
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s "
                                 "AND datname = current_database() AND query ILIKE '%%mirror_mirroroutbox%%'",
                                 [writer_pid]).fetchone())


@pytest.mark.django_db(transaction=True)
def test_the_drain_never_holds_an_outbox_row_while_it_waits_for_another(mirror, historical_payload):
    """Case "finish vs writer": a writer holds the outbox row of step A (its change not yet committed) and
    then changes step B; the drain finishing a batch of B and A must not hold B's row while it waits for A
    (else: deadlock, one side aborted). The writer's two changes are both mirrored afterwards: none lost."""
    queue, _ = queue_create(payload=historical_payload, queue_id="held-rows")
    mirror_drain()
    a, b = list(queue.steps.order_by("pk")[:2])
    for step in (b, a):  # B's row first in the table (and in the batch): the order the finish meets them
        outbox.record_many("step", [step.pk])
    version, rows = sync._claim(100)
    batch, deleted = sync._build(version, rows)
    assert not sync._write(arango.connect(), batch, deleted)
    rows.sort(key=lambda r: r.object_id != b.pk)

    failures = []

    def finish():
        try:
            sync._finish(rows, {})
        except Exception as exc:  # the deadlock victim
            failures.append(exc)
        finally:
            connections.close_all()

    with psycopg.connect(**connection.get_connection_params()) as writer:
        writer.execute(outbox._UPSERT_SQL, ["step", [a.pk], [""]])  # records A's change: holds its row
        pid = writer.info.backend_pid
        finishing = threading.Thread(target=finish)
        finishing.start()
        wait_until(lambda: _waiting_for_a_lock(pid) or not finishing.is_alive(), timeout=30)
        writer.execute(outbox._UPSERT_SQL, ["step", [b.pk], [""]])  # the old finish held B's row here: a cycle
        writer.commit()
    finishing.join(timeout=60)
    assert not finishing.is_alive() and not failures
    # Both rows carry a change made after the claim: kept, released, and the next drain mirrors them.
    assert set(MirrorOutbox.objects.values_list("object_id", "claimed_until")) == {(a.pk, None), (b.pk, None)}
    mirror_drain()
    assert not MirrorOutbox.objects.exists()
    assert_mirror_matches_postgres(mirror)
