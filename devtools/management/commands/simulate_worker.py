"""Run the StreamForge worker simulator with this process's environment (see devtools/simulator/)."""
from django.core.management.base import BaseCommand

from devtools.simulator import worker


class Command(BaseCommand):
    help = "Behave like a StreamForge worker (loader, connector, graph-builder, trainer, visualizer) from the Job environment."

    def handle(self, *args, **options):
        raise SystemExit(worker.main())
