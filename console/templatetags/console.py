"""Links from the console to the tools around it: API docs (Swagger UI, ReDoc), Flower and /metrics."""
from __future__ import annotations

from django import template
from django.conf import settings
from django.urls import NoReverseMatch, reverse

register = template.Library()

TOOLS = (
    ("API docs", "swagger-ui", "Swagger UI: the same operations over HTTP, try them out with this session"),
    ("ReDoc", "redoc", "The API reference as one page"),
    ("Metrics", "metrics", "Prometheus metrics of this deployment"),
)


@register.simple_tag
def console_tools() -> list[tuple[str, str, str]]:
    tools = []
    for label, name, hint in TOOLS:
        try:
            tools.append((label, reverse(name), hint))
        except NoReverseMatch:
            continue
    if settings.FLOWER_URL:
        tools.insert(2, ("Flower", settings.FLOWER_URL, "Celery tasks that launch, stop and reconcile steps"))
    return tools
