from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    # Before admin/, so the console's page outside a ModelAdmin wins.
    path("", include("console.urls")),
    path("admin/", admin.site.urls),
    path("", include("api.urls")),
    path("", include("ops.urls")),  # health probes; its /metrics wins over django_prometheus
    path("", include("django_prometheus.urls")),
]
