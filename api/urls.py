"""URLs of the REST API (/api/...), its docs, and the original service's legacy routes (/queues/...).

Include from the root URLconf before `admin/`; the orchestration routes come before the router's.
"""
from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import DefaultRouter

from api import legacy, orchestration, views
from api.docs import RedocView, SwaggerView
from api.manifests import QueueManifestsView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("queues", views.QueueViewSet, basename="queue")
router.register("templates", views.TemplateViewSet, basename="template")

QUEUE = "queues/<str:queue_id>"

# Orchestration (api/orchestration.py) and the Job previews (api/manifests.py): more specific than
# the router's queue routes, so they come first.
orchestration_patterns = [
    path("telemetry/", orchestration.TelemetryView.as_view(), name="telemetry"),
    path(f"{QUEUE}/retry/", orchestration.RetryView.as_view(), name="queue-retry"),
    path(f"{QUEUE}/events/", orchestration.QueueEventsView.as_view(), name="queue-events"),
    path(f"{QUEUE}/steps/<str:name>/stop/", orchestration.StepStopView.as_view(), name="step-stop"),
    path(f"{QUEUE}/steps/<str:name>/logs/", orchestration.StepLogsView.as_view(), name="step-logs"),
    path(f"{QUEUE}/manifests/", QueueManifestsView.as_view(), name="queue-manifests"),
]

api_patterns = [
    *orchestration_patterns,
    path("", include(router.urls)),
    path("catalogue/", views.CatalogueView.as_view(), name="catalogue"),
    path("schema/", SpectacularAPIView.as_view(permission_classes=[IsAuthenticated]), name="schema"),
    path("docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
]

legacy_patterns = [
    path("start-pipeline", legacy.LegacyStartPipelineView.as_view(), name="legacy-start-pipeline"),
    path("stop", legacy.LegacyStopView.as_view(), name="legacy-stop"),
    path("list", legacy.LegacyListView.as_view(), name="legacy-list"),
]

urlpatterns = [
    path("api/", include(api_patterns)),
    path("queues/", include(legacy_patterns)),
]
