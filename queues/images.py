"""Which container images a step request may name (DESIGN §11, least authority).

A step's container receives the platform's Kafka and ArangoDB credentials, so an `image` override
must come from a registry listed in ALLOWED_IMAGE_REGISTRIES (default: K8S_IMAGE_REGISTRY, where the
catalogue's own images live) unless the submitting user holds `queues.override_image`. Kafka `start`
commands carry no user, so they never have that permission.
"""
from __future__ import annotations

import re

from django.conf import settings

from queues.permissions import OVERRIDE_IMAGE
IMAGE_MAX = 255  # QueueRequest.image

# The container image reference grammar: an optional registry host[:port], lower-case path
# components, an optional tag and digest. Parsing it (instead of a loose character class) is what
# makes a registry prefix check meaningful: `registry.local/streamforge/../x` is not a reference.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
DEFAULT_HOST = "docker.io"  # where a runtime pulls a reference that names no registry


def repository_path(image: str) -> list[str] | None:
    """`Host/a/b:tag` → `["host", "a", "b"]` with the registry made explicit; None if not a reference."""
    if len(image) > IMAGE_MAX:
        return None
    match = _REFERENCE.fullmatch(image)
    if match is None:
        return None
    parts = match["name"].split("/")
    first = parts[0]
    # The runtime's own rule: the first component is a registry host only if it looks like one.
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return [first.lower(), *parts[1:]]
    return [DEFAULT_HOST, *(parts if len(parts) > 1 else ["library", *parts])]


def _registry_path(registry: str) -> list[str]:
    parts = [p for p in registry.strip().split("/") if p]
    return [parts[0].lower(), *parts[1:]] if parts else []


def is_valid(image: str) -> bool:
    return repository_path(image) is not None


def is_from_allowed_registry(image: str) -> bool:
    """Whether `image` lies under one of ALLOWED_IMAGE_REGISTRIES (a host, or a host and path prefix)."""
    path = repository_path(image)
    if path is None:
        return False
    for registry in settings.ALLOWED_IMAGE_REGISTRIES:
        prefix = _registry_path(registry)
        # Whole components only: `registry.local/streamforge` does not cover `…/streamforge-evil/x`.
        if prefix and len(path) > len(prefix) and path[: len(prefix)] == prefix:
            return True
    return False


def may_override(user) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False) and user.has_perm(OVERRIDE_IMAGE))
