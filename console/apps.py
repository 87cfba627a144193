from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ConsoleConfig(AppConfig):
    """The operators' console: the Django admin of the queues' models, its pages and static files.

    An entry point like the API: it reads the domain (queues) and calls the orchestration's
    services (jobs); the admin registers queues' models from here (templates stay under
    templates/admin/queues/, named by the models' app label).
    """

    name = "console"
    verbose_name = "Console"


class ConsoleAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the console's site (console.site.ConsoleSite) as `admin.site`."""

    default = False  # "console" still means ConsoleConfig; settings name this one by its path
    default_site = "console.site.ConsoleSite"  # outside console.admin: importing it must not register the ModelAdmins
