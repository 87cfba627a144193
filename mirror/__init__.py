"""ArangoDB mirror of queues, steps, telemetry and the lineage graph (DESIGN §8).

Entry points: `mirror.outbox.record()` (note a change), `mirror.tasks.mirror_drain_task` (drain),
`mirror.status()` (numbers for admin/metrics), `manage.py arango_resync` (rebuild).
"""


def status() -> dict:
    from mirror.sync import mirror_status

    return mirror_status()
