"""Issue #12 (mirror lag at 1,000 changes/s): what a drained batch costs, how the drain keeps going,
and what the outbox says about a hot entity. Behaviour, not timings (those are in `make bench`)."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mirror import arango, outbox, sync, tasks
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from queues.models import QueueRequest, StepState
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def _queues(payload, n, prefix):
    return [queue_create(payload=payload, queue_id=f"{prefix}-{i}")[0] for i in range(n)]


def _touch_steps(steps):
    outbox.record_many("step", [s.pk for s in steps])


def _drain_cost(mirror, steps) -> tuple[int, int]:
    """(PostgreSQL queries, ArangoDB requests) of one drain of these steps' changes, in one batch."""
    _touch_steps(steps)
    before = len(mirror.emulator.requests)
    with CaptureQueriesContext(connection) as queries:
        result = mirror_drain(batch_size=1000)
    assert (result.batches, result.synced) == (1, len(steps))
    return len(queries), len(mirror.emulator.requests) - before


def test_the_cost_of_a_batch_does_not_grow_with_its_size(mirror, historical_payload):
    """Issue #12, case "queries per drained batch independent of batch size" (no N+1 while building
    documents, one write per collection, claim and delete in set-based statements)."""
    queues = _queues(historical_payload, 4, "cost")
    mirror_drain()
    mirror_drain()  # warm: the schema is checked once per process
    steps = list(QueueRequest.objects.filter(queue__in=queues).order_by("pk"))
    small = _drain_cost(mirror, [s for s in steps if s.queue_id == queues[0].pk])  # same shapes, fewer
    large = _drain_cost(mirror, steps)
    assert len(steps) >= 12
    assert small == large
    queries, requests = large
    assert queries <= 5, "claim, read the steps, delete, release, note the status"
    assert_mirror_matches_postgres(mirror)


def test_a_drain_reads_only_the_step_columns_its_documents_use(mirror, historical_payload):
    """Issue #12, case "per-document cost of a drain": a step row carries its logs' tail, the request
    as submitted, the launcher handle and the worker's last `extra`; the drain loaded and decoded
    them all for every change although no document holds them."""
    queue_create(payload=historical_payload)
    mirror_drain()
    _touch_steps(QueueRequest.objects.all())
    with CaptureQueriesContext(connection) as queries:
        assert mirror_drain().synced == 6
    selects = [q["sql"] for q in queries.captured_queries if 'FROM "queues_queuerequest"' in q["sql"]]
    assert selects
    for column in ("logs", "params", "launcher_handle", "extra"):
        assert all(f'"queues_queuerequest"."{column}"' not in sql for sql in selects), column
    assert_mirror_matches_postgres(mirror)


def test_an_idle_drain_costs_one_claim_and_one_status_update(mirror, historical_payload):
    """Issue #12, case "a drain runs on every commit and on the beat": with nothing pending it asks
    PostgreSQL once for work and notes its success once, and does not talk to ArangoDB."""
    queue_create(payload=historical_payload)
    mirror_drain()
    before = len(mirror.emulator.requests)
    with CaptureQueriesContext(connection) as queries:
        assert mirror_drain().synced == 0
    assert len(queries) == 2
    assert len(mirror.emulator.requests) == before


def test_a_row_kept_for_a_newer_change_dates_from_the_claim(mirror, historical_payload):
    """Issue #12, case "a hot entity": a step that changes again while its batch is in flight keeps its
    outbox row, but the change that was written is no longer pending; the row's `created_at` (the
    oldest pending change, shown as the mirror's age) moves to the claim instead of staying at the
    first change forever."""
    queue, _ = queue_create(payload=historical_payload, queue_id="hot")
    mirror_drain()
    step = queue.steps.get(position=0)
    step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
    first = MirrorOutbox.objects.get(kind="step", object_id=step.pk).created_at
    version, rows = sync._claim(100)
    batch, _ = sync._build(version, rows)
    step.transition(StepState.RUNNING, from_states=[StepState.LAUNCHING])  # after the state was read
    sync._finish(rows, sync.write_batch(arango.connect(), batch))

    row = MirrorOutbox.objects.get(kind="step", object_id=step.pk)
    assert row.claimed_until is None and row.version > rows[0].version
    assert row.created_at > first
    assert sync.mirror_status()["oldest_pending_at"] == row.created_at
    mirror_drain()
    assert not MirrorOutbox.objects.exists()


def test_a_drain_that_stops_with_rows_pending_enqueues_the_next_one(mirror, historical_payload, monkeypatch,
                                                                     settings):
    """Issue #12, case "a drain continues while rows are pending": a run is bounded (MAX_BATCHES_PER_RUN)
    so a backlog does not hold a worker, but it hands over to the next run at once instead of leaving
    the rest to the beat."""
    queue_create(payload=historical_payload)
    mirror_drain()
    steps = list(QueueRequest.objects.order_by("pk")[:5])
    _touch_steps(steps)
    calls = []
    monkeypatch.setattr(tasks.mirror_drain_task, "delay", lambda: calls.append(1))
    monkeypatch.setattr(sync, "MAX_BATCHES_PER_RUN", 2)
    settings.MIRROR_BATCH_SIZE = 2

    assert tasks.mirror_drain_task() == {"synced": 4, "failed": 0, "batches": 2}
    assert calls == [1]  # one row left: the next run is on its way
    assert tasks.mirror_drain_task() == {"synced": 1, "failed": 0, "batches": 1}
    assert calls == [1]  # done: nothing enqueued
    assert not MirrorOutbox.objects.exists()


def test_commits_while_a_drain_is_queued_enqueue_no_other(mirror, monkeypatch):
    """Issue #12, case "`mirror_drain_task.delay()` on every commit": at 1,000 changes/s that is dozens
    of tasks a second, each claiming an empty or tiny batch beside the others. One drain waits in the
    broker at a time; it takes everything committed before it starts, and a commit after its start
    enqueues the next."""
    calls = []
    monkeypatch.setattr(tasks.mirror_drain_task, "delay", lambda: calls.append(1))
    outbox._enqueue_drain()
    outbox._enqueue_drain()
    outbox._enqueue_drain()
    assert calls == [1]
    tasks.mirror_drain_task()  # the queued drain starts: the next commit needs a drain of its own
    outbox._enqueue_drain()
    assert calls == [1, 1]


def test_without_the_flag_store_every_commit_enqueues(mirror, monkeypatch):
    """Issue #12: the debounce is an optimisation; when Redis does not answer, enqueue anyway."""
    calls = []
    monkeypatch.setattr(tasks.mirror_drain_task, "delay", lambda: calls.append(1))

    class Down:
        def set(self, *args, **kwargs):
            raise ConnectionError("redis down")

        delete = set

    monkeypatch.setattr(tasks, "_flag_store", lambda: Down())
    outbox._enqueue_drain()
    outbox._enqueue_drain()
    assert calls == [1, 1]
