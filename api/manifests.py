"""Read-only API of the jobs app: the Jobs a queue runs as, rendered without creating anything."""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.manifests import queue_manifests
from api.permissions import HasQueuePermission
from queues.permissions import VIEW_QUEUE
from queues.models import Queue


class QueueManifestsView(APIView):
    """GET /api/queues/{queue_id}/manifests/ — every step's Kubernetes Job, as it would be created."""

    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE

    @extend_schema(
        tags=["queues"],
        summary="Preview the Kubernetes Jobs of a queue (dry run)",
        description="The batch/v1 Job of every step, in step order, exactly as the Kubernetes launcher "
        "creates it. Credentials appear only as Secret references. Nothing is created.",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request, queue_id: str):
        queue = get_object_or_404(Queue, queue_id=queue_id)
        return Response(queue_manifests(queue))
