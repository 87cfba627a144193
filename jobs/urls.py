"""URLs of the jobs app. Include from the root URLconf *before* `admin/` so the admin page wins:

    path("", include("jobs.urls")),
"""
from __future__ import annotations

from django.contrib import admin
from django.urls import path

from jobs.admin_views import queue_manifests_view
from jobs.api import QueueManifestsView

QUEUE_ID = "<str:queue_id>"

urlpatterns = [
    path(f"api/queues/{QUEUE_ID}/manifests/", QueueManifestsView.as_view(), name="queue-manifests"),
    path(
        f"admin/queues/queue/{QUEUE_ID}/manifests/",
        admin.site.admin_view(queue_manifests_view),
        name="admin-queue-manifests",
    ),
]
