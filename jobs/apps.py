from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Registers the tasks in every process (web, consumers, worker): services announce work
        # by task name (jobs/announce.py), so the registry must hold them before the first request.
        from jobs import tasks  # noqa: F401
