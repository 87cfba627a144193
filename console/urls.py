"""The console's pages outside a ModelAdmin. Include from the root URLconf before `admin/`."""
from __future__ import annotations

from django.contrib import admin
from django.urls import path

from console.admin.manifests import queue_manifests_view

urlpatterns = [
    # The "dry run": a queue's Kubernetes Jobs as YAML, beside the queue's admin page.
    path(
        "admin/queues/queue/<str:queue_id>/manifests/",
        admin.site.admin_view(queue_manifests_view),
        name="admin-queue-manifests",
    ),
]
