"""Routes of the original service, kept for existing clients (deprecated in the schema).

Same authentication and permissions as /api/; same bodies and responses as their /api/ twins.
"""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.views import APIView

from queues import naming
from api import schema
from api.filters import QueueFilter, QueueFilterBackend
from api.pagination import NumberedQueuePagination
from api.parsers import JSONParser
from api.permissions import HasQueuePermission
from queues.permissions import START_QUEUE, STOP_QUEUE, VIEW_QUEUE
from api.serializers import QueueDetailSerializer, QueueSerializer
from api.views import CREATE_SCHEMA, create_queue_response, list_queryset, stop_queue_response
from queues.models import Queue

LEGACY = {"deprecated": True, "tags": ["legacy"]}


class LegacyStartPipelineView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = START_QUEUE
    parser_classes = [JSONParser]

    @extend_schema(
        summary="Start a queue (deprecated: use POST /api/queues/)",
        operation_id="legacy_start_pipeline",
        **CREATE_SCHEMA,
        **LEGACY,
    )
    def post(self, request):
        return create_queue_response(request)


class LegacyStopView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = STOP_QUEUE
    parser_classes = [JSONParser]

    @extend_schema(
        summary="Stop a queue (deprecated: use POST /api/queues/{queue_id}/stop/)",
        operation_id="legacy_stop",
        request=schema.StopRequestDoc,
        responses={
            202: QueueDetailSerializer,
            400: OpenApiResponse(description="`queue_id` missing or not a valid queue_id."),
            404: schema.DetailDoc,
        },
        **LEGACY,
    )
    def post(self, request):
        queue_id = request.data.get("queue_id") if isinstance(request.data, dict) else None
        if not isinstance(queue_id, str) or not queue_id:
            raise ValidationError({"queue_id": ["This field is required."]})
        if not naming.is_dns1123_label(queue_id, naming.QUEUE_ID_MAX):
            # Checked before the lookup: the database refuses some values (NUL) with an error.
            raise ValidationError({"queue_id": ["Not a valid queue_id (a lower-case DNS-1123 label)."]})
        return stop_queue_response(request, get_object_or_404(Queue, queue_id=queue_id))


class LegacyListView(generics.ListAPIView):
    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE
    serializer_class = QueueSerializer
    filterset_class = QueueFilter
    filter_backends = [QueueFilterBackend]
    pagination_class = NumberedQueuePagination  # the original service's clients page by number

    def get_queryset(self):
        return list_queryset()

    @extend_schema(summary="List queues (deprecated: use GET /api/queues/)", operation_id="legacy_list", **LEGACY)
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
