"""URLs of the REST API (/api/...), its docs, and the original service's legacy routes (/queues/...)."""
from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import DefaultRouter

from queues.api import legacy, views
from queues.api.docs import RedocView, SwaggerView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("queues", views.QueueViewSet, basename="queue")
router.register("templates", views.TemplateViewSet, basename="template")

api_patterns = [
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
