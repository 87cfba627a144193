"""REST API views: thin wrappers that parse, check permissions and delegate to jobs.services (jobs.submission for a new queue).

Orchestration routes (retry, per-step stop, events, logs, manifests) are added as @action
methods on QueueViewSet; give each `required_permission=` in the decorator, e.g.
`@action(detail=True, methods=["post"], required_permission=STOP_QUEUE)`.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import services, submission
from api import schema
from api.filters import QueueFilter, QueueFilterBackend
from api.pagination import QueuePagination
from api.parsers import JSONParser
from api.permissions import HasQueuePermission
from queues.permissions import START_QUEUE, STOP_QUEUE, VIEW_QUEUE
from api.serializers import QueueDetailSerializer, QueueSerializer, StepSerializer, list_rows, queue_detail_queryset
from queues.catalogue import catalogue_as_dict
from queues.history import Origin
from queues.models import Queue, QueueRequest
from queues.pipeline_templates import TEMPLATES, template_payload

QUEUE_ID_REGEX = r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?"


def list_queryset():
    return list_rows()


def create_queue_response(request, *, source: str = "api") -> Response:
    """Create (or idempotently return) a queue; errors become 400/409 in api.errors."""
    queue, created = submission.queue_create(payload=request.data, origin=Origin.http(request, source=source))
    queue = queue_detail_queryset().get(pk=queue.pk)
    data = QueueDetailSerializer(queue, context={"request": request}).data
    return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def stop_queue_response(request, queue: Queue) -> Response:
    services.queue_stop(queue=queue, origin=Origin.http(request, source="api"))
    queue = queue_detail_queryset().get(pk=queue.pk)
    return Response(QueueDetailSerializer(queue, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


CREATE_SCHEMA = dict(
    request=schema.PipelinePayloadDoc,
    examples=schema.PAYLOAD_EXAMPLES,
    responses={
        201: OpenApiResponse(QueueDetailSerializer, description="Created and advanced: the steps that wait on "
                                                                "nothing are `launching`, the rest `waiting`."),
        200: OpenApiResponse(QueueDetailSerializer, description="The same queue_id and payload were submitted before."),
        400: schema.FIELD_ERRORS_RESPONSE,
        409: schema.CONFLICT_RESPONSE,
    },
)


@extend_schema_view(
    list=extend_schema(
        summary="List queues",
        description="Newest first; filter by status, symbol, target, created range. Paged by cursor (follow `next`); "
        "`?page=N` answers in the page-number form with `count`; `?page_size=` up to API_MAX_PAGE_SIZE.",
    ),
    retrieve=extend_schema(summary="A queue with its steps and dependency edges"),
    create=extend_schema(
        summary="Start a queue",
        description="Body: the pipeline payload. Validated in full; on error nothing is created.",
        **CREATE_SCHEMA,
    ),
)
class QueueViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    lookup_field = "queue_id"
    lookup_value_regex = QUEUE_ID_REGEX
    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE
    permission_by_action = {"create": START_QUEUE}
    parser_classes = [JSONParser]
    filterset_class = QueueFilter
    filter_backends = [QueueFilterBackend]
    pagination_class = QueuePagination

    def get_queryset(self):
        return list_queryset() if self.action == "list" else queue_detail_queryset()

    def get_serializer_class(self):
        return QueueSerializer if self.action == "list" else QueueDetailSerializer

    def create(self, request, *args, **kwargs):
        return create_queue_response(request)

    @extend_schema(
        summary="Stop a queue",
        description="Cancels waiting steps and stops launched ones (graceful, then forced). Idempotent.",
        request=None,
        responses={202: QueueDetailSerializer},
    )
    @action(detail=True, methods=["post"], required_permission=STOP_QUEUE)
    def stop(self, request, queue_id=None):
        return stop_queue_response(request, self.get_object())

    @extend_schema(summary="The steps of a queue", responses={200: StepSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None, filterset_class=None)
    def steps(self, request, queue_id=None):
        queue = self.get_object()
        steps = QueueRequest.objects.filter(queue=queue).prefetch_related("upstream_edges__upstream")
        return Response(StepSerializer(steps, many=True, context={"request": request}).data)


class CatalogueView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE

    @extend_schema(
        summary="The target catalogue",
        description="Step types, targets with the types and fields each takes, intervals.",
        responses={200: OpenApiResponse(description="The catalogue as JSON.")},
    )
    def get(self, request):
        return Response(catalogue_as_dict())


class TemplateViewSet(viewsets.ViewSet):
    """The built-in payload templates (the two seed pipelines)."""

    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE
    lookup_field = "name"
    lookup_value_regex = r"[a-z0-9-]+"

    @staticmethod
    def _template(name: str) -> dict:
        return {"name": name, "description": TEMPLATES[name], "payload": template_payload(name)}

    @extend_schema(summary="List payload templates", responses={200: schema.TemplateDoc(many=True)})
    def list(self, request):
        return Response([self._template(name) for name in TEMPLATES])

    @extend_schema(summary="A payload template", responses={200: schema.TemplateDoc, 404: schema.DetailDoc})
    def retrieve(self, request, name=None):
        if name not in TEMPLATES:
            from django.http import Http404

            raise Http404(f"No template named {name!r}.")
        return Response(self._template(name))
