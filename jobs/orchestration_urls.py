"""Routes of the orchestration API (see jobs/views.py)."""
from django.urls import path

from jobs import views

QUEUE = "api/queues/<str:queue_id>"

urlpatterns = [
    path("api/telemetry/", views.TelemetryView.as_view(), name="telemetry"),
    path(f"{QUEUE}/retry/", views.RetryView.as_view(), name="queue-retry"),
    path(f"{QUEUE}/events/", views.QueueEventsView.as_view(), name="queue-events"),
    path(f"{QUEUE}/steps/<str:name>/stop/", views.StepStopView.as_view(), name="step-stop"),
    path(f"{QUEUE}/steps/<str:name>/logs/", views.StepLogsView.as_view(), name="step-logs"),
]
