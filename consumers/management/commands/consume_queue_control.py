from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Consume queue-control (start/stop/ping), acknowledge on queue-events. Stops cleanly on SIGTERM/SIGINT."

    def handle(self, *args, **options):
        if not settings.KAFKA_ENABLED:
            raise CommandError("Kafka is off: set KAFKA_BOOTSTRAP_SERVERS")
        from kafkabus.consumer import reexec_process
        from consumers.control import run

        run(on_stall=reexec_process)
