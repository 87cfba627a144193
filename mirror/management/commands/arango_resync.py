"""Rebuild the whole ArangoDB mirror from PostgreSQL (idempotent)."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mirror.arango import MirrorUnavailable
from mirror.resync import mirror_resync


class Command(BaseCommand):
    help = "Write every queue, step, telemetry event and lineage edge to ArangoDB and remove what PostgreSQL lacks."

    def add_arguments(self, parser):
        parser.add_argument("--truncate", action="store_true", help="Empty the mirror's collections first.")
        parser.add_argument("--chunk-size", type=int, default=500, help="Entities per bulk write (default 500).")

    def handle(self, *args, truncate=False, chunk_size=500, **options):
        if not settings.ARANGO_ENABLED:
            raise CommandError("The ArangoDB mirror is off: set ARANGO_URL.")
        if chunk_size < 1:
            raise CommandError("--chunk-size must be at least 1")
        try:
            counts = mirror_resync(truncate=truncate, chunk_size=chunk_size)
        except MirrorUnavailable as exc:
            raise CommandError(str(exc)) from exc
        for name, count in counts.items():
            self.stdout.write(f"{name}: {count}")
        if counts["errors"]:
            raise CommandError(f"{counts['errors']} document(s) were rejected; see the mirror status in the admin.")
        self.stdout.write(self.style.SUCCESS("ArangoDB mirror rebuilt."))
