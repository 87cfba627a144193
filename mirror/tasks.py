"""Celery interface of the mirror: one idempotent drain task (the work is in mirror.sync.mirror_drain)."""
from celery import shared_task

from mirror.arango import MirrorUnavailable
from mirror.outbox import drain_started, enqueue_drain
from mirror.sync import mirror_drain


@shared_task(
    name="mirror.tasks.mirror_drain_task",
    autoretry_for=(MirrorUnavailable,),
    retry_backoff=5,  # 5 s, 10 s, 20 s … capped below; beat also runs it, so giving up loses nothing
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
    ignore_result=True,
)
def mirror_drain_task() -> dict:
    drain_started()
    result = mirror_drain()
    if result.more:  # a run is bounded; the backlog goes on in the next one, not at the next beat
        enqueue_drain()
    return {"synced": result.synced, "failed": result.failed, "batches": result.batches}
