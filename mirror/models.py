"""The mirror's bookkeeping: an outbox of changed entities and one status row.

The outbox holds one row per changed entity (kind, object_id); repeated changes before the drain
coalesce into that row with a newer `version` taken from the `mirror_version_seq` sequence. The
drain deletes a row only if its version is still the one it claimed, so a change made while a
batch was in flight is never dropped.
"""
from django.db import models
from django.utils import timezone

# Every change takes its `version` from this PostgreSQL sequence (migration 0001): the outbox when
# it records a change, the drain when it claims a batch.
VERSION_SEQUENCE = "mirror_version_seq"


class EntityKind(models.TextChoices):
    QUEUE = "queue"
    STEP = "step"
    TELEMETRY = "telemetry"


class MirrorOutbox(models.Model):
    kind = models.CharField(max_length=16, choices=EntityKind.choices)
    object_id = models.BigIntegerField(help_text="Primary key of the changed row in PostgreSQL.")
    doc_key = models.CharField(
        max_length=254, blank=True, help_text="ArangoDB document key, known when recorded from an instance (for deletes)."
    )
    version = models.BigIntegerField(help_text="Change marker from mirror_version_seq; bumped on every change.")
    created_at = models.DateTimeField(default=timezone.now, help_text="First unsynced change of this entity.")
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="Lease of the drain working on this row.")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        verbose_name = "mirror outbox row"
        constraints = [models.UniqueConstraint(fields=["kind", "object_id"], name="unique_mirror_outbox_entity")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.object_id} v{self.version}"


class MirrorState(models.Model):
    """A singleton (pk=1) the drain updates: what the admin and metrics show."""

    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_synced = models.PositiveIntegerField(default=0, help_text="Entities synced by the last successful drain.")
    total_synced = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "mirror status"
        verbose_name_plural = "mirror status"

    def __str__(self) -> str:
        return "ArangoDB mirror"

    @classmethod
    def get(cls) -> "MirrorState":
        return cls.objects.get_or_create(pk=1)[0]
