from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    # Before admin/ and the queue router, so their more specific routes win.
    path("", include("jobs.urls")),
    path("admin/", admin.site.urls),
    path("", include("queues.api.urls")),
    path("", include("ops.urls")),  # health probes; its /metrics wins over django_prometheus
    path("", include("django_prometheus.urls")),
]
