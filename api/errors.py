"""API error responses: domain exceptions become JSON with the right status, never a 500.

- PayloadError  → 400, body maps each field path to its messages
  (`{"requests[4].collection_output": ["This field is required for ..."]}`).
- QueueConflict → 409, `{"detail": ..., "queue_id": ...}`.
- Everything else keeps DRF's default shape (`{"detail": ...}`; Http404 → 404).
"""
from __future__ import annotations

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from queues.contract import PayloadError
from jobs.submission import QueueConflict


def exception_handler(exc, context):
    if isinstance(exc, PayloadError):
        set_rollback()
        return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, QueueConflict):
        set_rollback()
        return Response(
            {
                "detail": f"Queue {exc.queue_id!r} already exists with a different payload. "
                "Resubmit the identical payload to get the existing queue, or use another queue_id.",
                "queue_id": exc.queue_id,
            },
            status=status.HTTP_409_CONFLICT,
        )
    return drf_exception_handler(exc, context)
