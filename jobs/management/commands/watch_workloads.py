from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Watch this manager's Jobs and Pods and reconcile the steps whose workloads change (one replica). "
            "While it is healthy the beat's reconcile pass does not list the cluster. Stops cleanly on SIGTERM/SIGINT.")

    def handle(self, *args, **options):
        if settings.JOB_LAUNCHER != "kubernetes":
            raise CommandError("the workload watcher needs JOB_LAUNCHER=kubernetes")
        from jobs.k8s_watch import WorkloadWatcher

        WorkloadWatcher().run(install_signals=True)
