"""URLs of the jobs app. Include from the root URLconf *before* `admin/` so the admin page wins:

    path("", include("jobs.urls")),
"""
from __future__ import annotations

from django.contrib import admin
from django.urls import path

from jobs import views
from jobs.admin_views import queue_manifests_view
from jobs.api import QueueManifestsView

QUEUE_ID = "<str:queue_id>"
QUEUE = f"api/queues/{QUEUE_ID}"

urlpatterns = [
    # Orchestration API (jobs/views.py).
    path("api/telemetry/", views.TelemetryView.as_view(), name="telemetry"),
    path(f"{QUEUE}/retry/", views.RetryView.as_view(), name="queue-retry"),
    path(f"{QUEUE}/events/", views.QueueEventsView.as_view(), name="queue-events"),
    path(f"{QUEUE}/steps/<str:name>/stop/", views.StepStopView.as_view(), name="step-stop"),
    path(f"{QUEUE}/steps/<str:name>/logs/", views.StepLogsView.as_view(), name="step-logs"),
    # Previews of the Kubernetes Jobs (API and admin dry run).
    path(f"{QUEUE}/manifests/", QueueManifestsView.as_view(), name="queue-manifests"),
    path(
        f"admin/queues/queue/{QUEUE_ID}/manifests/",
        admin.site.admin_view(queue_manifests_view),
        name="admin-queue-manifests",
    ),
]
