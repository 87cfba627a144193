"""Read-only admin: the mirror's status (one row) and the pending outbox rows with their errors."""
from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from mirror.models import MirrorOutbox, MirrorState
from mirror.sync import mirror_status


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(MirrorState)
class MirrorStateAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "enabled", "backlog", "oldest_pending", "last_success_at", "last_error_at", "error"]
    list_display_links = None

    def changelist_view(self, request, extra_context=None):
        MirrorState.get()  # the singleton row always shows, even before the first drain
        self._status = mirror_status()
        return super().changelist_view(request, extra_context=extra_context)

    @admin.display(boolean=True)
    def enabled(self, obj):
        return self._status["enabled"]

    def backlog(self, obj):
        failing = self._status["failing"]
        return f"{self._status['backlog']} pending" + (f" ({failing} failing)" if failing else "")

    def oldest_pending(self, obj):
        oldest = self._status["oldest_pending_at"]
        return f"{int((timezone.now() - oldest).total_seconds())} s ago" if oldest else "—"

    def error(self, obj):
        return format_html("<code>{}</code>", obj.last_error[:300]) if obj.last_error else "—"


@admin.register(MirrorOutbox)
class MirrorOutboxAdmin(ReadOnlyAdmin):
    list_display = ["kind", "object_id", "doc_key", "version", "created_at", "attempts", "claimed_until", "last_error"]
    list_filter = ["kind"]
    search_fields = ["doc_key", "last_error"]
    ordering = ["created_at"]
