from django.apps import AppConfig


class MirrorConfig(AppConfig):
    name = "mirror"
    verbose_name = "ArangoDB mirror"

    def ready(self):
        from mirror import outbox

        outbox.connect_signals()
