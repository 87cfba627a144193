from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operators' console: the Django admin of the queues' models, its pages and static files.

    An entry point like the API: it reads the domain (queues) and calls the orchestration's
    services (jobs); the admin registers queues' models from here (templates stay under
    templates/admin/queues/, named by the models' app label).
    """

    name = "console"
    verbose_name = "Console"
