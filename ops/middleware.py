"""Answers probes and scrapes before host validation, SSL redirect and sessions.

Kubelet probes, the image HEALTHCHECK and Prometheus address the pod by IP, a Host that
ALLOWED_HOSTS rightly does not list; the answers build no URLs, so host validation adds nothing
here. Placed right after django-prometheus' "before" middleware so requests are still counted.
"""
from __future__ import annotations

from ops import exposition, health

PROBE_VIEWS = {
    "/health/live": health.live,
    "/health/ready": health.ready,
    "/health/startup": health.startup,
    "/metrics": exposition.metrics_view,
}


class ProbeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = PROBE_VIEWS.get(request.path_info.rstrip("/") or "/")
        if view is not None and request.method in ("GET", "HEAD"):
            return view(request)
        return self.get_response(request)
