from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Ingest worker telemetry from queue-events in batches (at-least-once, idempotent). Stops cleanly on SIGTERM/SIGINT."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=None, help="messages per transaction (KAFKA_BATCH_SIZE)")

    def handle(self, *args, **options):
        if not settings.KAFKA_ENABLED:
            raise CommandError("Kafka is off: set KAFKA_BOOTSTRAP_SERVERS")
        from kafkabus.consumer import reexec_process
        from consumers.events import run

        run(batch_size=options["batch_size"], on_stall=reexec_process)
