from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Receivers turn domain signals into metrics and Celery task signals into log context,
        # so the code that does the work needs no metrics or logging calls for these.
        from ops import exposition, receivers
        from ops import logging as ops_logging

        receivers.connect()
        ops_logging.connect_celery_signals()
        exposition.connect_celery_signals()
