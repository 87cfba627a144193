"""Celery interface of the mirror: one idempotent drain task (the work is in mirror.sync.mirror_drain),
and how commits enqueue it."""
import logging

from celery import shared_task
from django.conf import settings

from jobs.broker_redis import broker_redis as _flag_store
from mirror.arango import MirrorUnavailable
from mirror.sync import mirror_drain

logger = logging.getLogger(__name__)


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


# At most one drain waits in the broker: a drain takes everything committed before it starts, so a
# commit while one is queued needs none of its own (at 1,000 changes/s, one task per commit would be
# dozens of drains a second, each claiming a sliver beside the others). The drain task clears the
# flag when it starts; a lost task is covered by the expiry and by beat.
DRAIN_FLAG = "mirror:drain-queued"


def drain_started() -> None:
    """Called by the drain task before it claims: commits from now on enqueue the next drain."""
    try:
        _flag_store().delete(DRAIN_FLAG)
    except Exception:  # the flag expires on its own
        logger.warning("could not clear the mirror drain flag", exc_info=True)


def enqueue_drain() -> None:
    """Enqueue the drain task unless one is queued and not started yet."""
    try:
        if not _flag_store().set(DRAIN_FLAG, "1", nx=True, ex=max(1, int(settings.MIRROR_SYNC_INTERVAL_SECONDS))):
            return  # a drain is queued and has not started: it will take this change
    except Exception:  # no flag, no debounce: enqueue anyway
        logger.debug("mirror drain flag unavailable", exc_info=True)
    try:
        mirror_drain_task.delay()
    except Exception:  # a broker hiccup must not fail the control plane; beat drains the backlog anyway
        logger.warning("could not enqueue the mirror drain; the periodic drain will pick the changes up", exc_info=True)
        drain_started()  # nothing is queued: let the next commit try again
