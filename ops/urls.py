from django.urls import path

from ops import exposition, health

urlpatterns = [
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/startup", health.startup, name="health-startup"),
    # Before django_prometheus.urls in the root URLconf: adds domain and database-backed metrics.
    path("metrics", exposition.metrics_view, name="metrics"),
]
