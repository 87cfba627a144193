"""`manage.py prune_history [--dry-run]`: the retention run that beat does periodically, on demand."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from ops.retention import TableReport, history_prune


class Command(BaseCommand):
    help = (
        "Delete telemetry events and processed Kafka commands older than TELEMETRY_RETENTION_DAYS / "
        "COMMAND_RETENTION_DAYS, in batches; rows of queues that are not finished are kept."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument("--batch-size", type=int, default=None, help="Rows per batch (default RETENTION_BATCH_SIZE).")

    def handle(self, *args, dry_run: bool = False, batch_size: int | None = None, **options) -> None:
        if batch_size is not None and batch_size < 1:
            self.stderr.write("--batch-size must be at least 1")
            raise SystemExit(2)
        report = history_prune(dry_run=dry_run, batch_size=batch_size)
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {self._describe(report.telemetry, 'telemetry events')}")
        self.stdout.write(f"{verb} {self._describe(report.commands, 'processed commands')}")

    @staticmethod
    def _describe(table: TableReport, noun: str) -> str:
        if table.cutoff is None:
            return f"0 {noun} (retention 0: kept forever)"
        return f"{table.deleted} {noun} older than {table.cutoff:%Y-%m-%d %H:%M} UTC in {len(table.batches)} batch(es)"
