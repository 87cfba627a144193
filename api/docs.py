"""OpenAPI schema and its two readers, served from drf-spectacular-sidecar (no CDN).

The schema needs a logged-in user (session or token) like the rest of the API. The HTML pages
redirect an anonymous visitor to the admin login and come back afterwards, so "Try it out" in
Swagger UI works with the operator's session.
"""
from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny


class _LoginRedirectMixin:
    permission_classes = [AllowAny]  # the page itself holds nothing; the schema it loads is protected

    @extend_schema(exclude=True)
    def get(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        return super().get(request, *args, **kwargs)


class SwaggerView(_LoginRedirectMixin, SpectacularSwaggerView):
    pass


class RedocView(_LoginRedirectMixin, SpectacularRedocView):
    template_name = "api/redoc.html"  # without the stock page's web-font CDN links
