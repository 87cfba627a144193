import json
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Send one JSON command to queue-control and wait for its delivery, e.g. "
        "`manage.py kafka_send '{\"command\":\"ping\",\"command_id\":\"p1\"}'` or with `-` to read stdin."
    )

    def add_arguments(self, parser):
        parser.add_argument("message", help="a JSON object, or - for stdin")
        parser.add_argument("--topic", default=None, help="default: QUEUE_CONTROL_TOPIC")

    def handle(self, *args, **options):
        if not settings.KAFKA_ENABLED:
            raise CommandError("Kafka is off: set KAFKA_BOOTSTRAP_SERVERS")
        from kafkabus.publisher import DeliveryError, Outgoing, send_confirmed

        text = sys.stdin.read() if options["message"] == "-" else options["message"]
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CommandError(f"not JSON: {exc}") from exc
        topic = options["topic"] or settings.QUEUE_CONTROL_TOPIC
        key = data.get("queue_id") if isinstance(data, dict) else None
        try:
            send_confirmed([Outgoing(topic, json.dumps(data).encode(), key.encode() if isinstance(key, str) else None)])
        except DeliveryError as exc:
            raise CommandError(f"not delivered: {exc}") from exc
        self.stdout.write(f"sent to {topic}")
