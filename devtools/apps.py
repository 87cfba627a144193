from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """Installed only where the dev tools are (never in the image, see .dockerignore): it holds
    `manage.py simulate_worker`."""

    name = "devtools"
    verbose_name = "Developer tools"
