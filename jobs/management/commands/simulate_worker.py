"""Run the StreamForge worker simulator with this process's environment (see jobs/simulator.py)."""
from django.core.management.base import BaseCommand

from jobs import simulator


class Command(BaseCommand):
    help = "Behave like a StreamForge worker (loader, connector, graph-builder, trainer, visualizer) from the Job environment."

    def handle(self, *args, **options):
        raise SystemExit(simulator.main())
