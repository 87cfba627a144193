"""Commands claimed or handled, so a redelivered `command_id` acts once (even after a restart; see kafkabus.claims)."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class ProcessedCommand(models.Model):
    command_id = models.CharField(max_length=200, unique=True)
    command = models.CharField(max_length=32)
    status = models.CharField(max_length=16, help_text="processing (claimed, acting), accepted or rejected")
    queue_id = models.CharField(max_length=40, blank=True)
    ack = models.JSONField(default=dict, help_text="The acknowledgement that was published.")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "processed Kafka command"

    def __str__(self) -> str:
        return f"{self.command} {self.command_id}: {self.status}"
