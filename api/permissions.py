"""One permission class for the whole API: every view names the Django permission it needs.

A view (or a ViewSet @action, via its kwargs) sets `required_permission`; a ViewSet may map its
standard actions in `permission_by_action`. Anonymous users never get past authentication.
"""
from __future__ import annotations

from rest_framework.permissions import BasePermission

from queues.permissions import VIEW_QUEUE


def required_permission(view) -> str | tuple[str, ...]:
    """One permission, or a tuple of permissions that are all required."""
    by_action = getattr(view, "permission_by_action", {})
    action = getattr(view, "action", None)
    if action in by_action:
        return by_action[action]
    return getattr(view, "required_permission", VIEW_QUEUE)


class HasQueuePermission(BasePermission):
    message = "You do not have the permission this operation needs."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        permission = required_permission(view)
        permissions = permission if isinstance(permission, tuple) else (permission,)
        self.message = f"This operation needs the permission {' and '.join(map(repr, permissions))}."
        return user.has_perms(permissions)
