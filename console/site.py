"""The console's admin site: Django's, with the apps on its home page in the order operators need them."""
from __future__ import annotations

from django.contrib.admin import AdminSite

# Queues first (the console's reason to be), then the mirror; accounts and tokens last. Apps not named
# here follow, alphabetically as Django lists them.
APP_ORDER = ("queues", "mirror", "authtoken", "auth")


class ConsoleSite(AdminSite):
    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        rank = {label: i for i, label in enumerate(APP_ORDER)}
        return sorted(apps, key=lambda app: rank.get(app["app_label"], len(APP_ORDER)))  # stable: keeps the rest
