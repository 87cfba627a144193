"""The console's admin site: Django's, with the apps on its home page in the order operators need them."""
from __future__ import annotations

from django.contrib.admin import AdminSite

from queues.permissions import START_QUEUE, VIEW_QUEUE

# Queues first (the console's reason to be), then the mirror; accounts and tokens last. Apps not named
# here follow, alphabetically as Django lists them.
APP_ORDER = ("queues", "mirror", "authtoken", "auth")


class ConsoleSite(AdminSite):
    def index(self, request, extra_context=None):
        """Django's home page, with what runs now and how today went above the apps, for who may see queues."""
        context = dict(extra_context or {})
        if request.user.has_perm(VIEW_QUEUE):
            from console.admin.summary import queue_summary  # the models: not while the site is built

            context["queue_summary"] = queue_summary()
            context["can_start_queue"] = request.user.has_perm(START_QUEUE)
        return super().index(request, context)

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        rank = {label: i for i, label in enumerate(APP_ORDER)}
        return sorted(apps, key=lambda app: rank.get(app["app_label"], len(APP_ORDER)))  # stable: keeps the rest
