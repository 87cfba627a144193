from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("queues.api.urls")),
    path("", include("django_prometheus.urls")),
]
