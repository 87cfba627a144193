"""Orchestration API: telemetry in, retry, per-step stop, events and logs of a queue's steps."""
from __future__ import annotations

import hmac

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.launchers import LaunchError, get_launcher
from jobs.telemetry import ingest_events
from queues import services
from queues.api.permissions import START_QUEUE, STOP_QUEUE, VIEW_QUEUE, HasQueuePermission
from queues.api.serializers import StepSerializer
from queues.models import Queue, QueueRequest, StepState, TelemetryEvent

MAX_TELEMETRY_BATCH = 5000
INGEST_TELEMETRY = "queues.add_telemetryevent"


class WorkerPrincipal:
    """The identity of a worker that presented the shared TELEMETRY_TOKEN: may only send telemetry."""

    is_authenticated = True
    is_active = True
    username = "worker"
    pk = None

    def has_perm(self, perm: str, obj=None) -> bool:
        return perm == INGEST_TELEMETRY


class TelemetryTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <TELEMETRY_TOKEN>` for workers that report over HTTP."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if len(header) != 2 or header[0].lower() != b"bearer":
            return None
        expected = settings.TELEMETRY_TOKEN.encode()
        if not expected or not hmac.compare_digest(header[1], expected):
            raise AuthenticationFailed("Invalid telemetry token.")
        return WorkerPrincipal(), None

    def authenticate_header(self, request):
        return "Bearer"


class TelemetryTokenScheme(OpenApiAuthenticationExtension):
    target_class = TelemetryTokenAuthentication
    name = "telemetryToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The shared TELEMETRY_TOKEN of workers."}


class CanIngestTelemetry(BasePermission):
    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.has_perm(INGEST_TELEMETRY))


class IngestResultDoc(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.ListField(child=serializers.DictField())


class TelemetryJSONParser(JSONParser):
    """JSON nested deeper than the parser can recurse is bad input (400), not a server error (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


class TelemetryView(APIView):
    authentication_classes = [TelemetryTokenAuthentication, *APIView.authentication_classes]
    permission_classes = [CanIngestTelemetry]
    parser_classes = [TelemetryJSONParser]

    @extend_schema(
        summary="Report worker telemetry",
        description=(
            "One event or a list of events in the `queue-events` format (either field dialect). "
            "Workers authenticate with `Authorization: Bearer <TELEMETRY_TOKEN>`; users need "
            "`queues.add_telemetryevent`. Duplicates are ignored. 400 if no event could be used."
        ),
        request={"application/json": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}},
        responses={202: IngestResultDoc, 400: IngestResultDoc},
    )
    def post(self, request):
        events = request.data if isinstance(request.data, list) else [request.data]
        if len(events) > MAX_TELEMETRY_BATCH:
            return Response({"detail": f"At most {MAX_TELEMETRY_BATCH} events per request."}, status=400)
        result = ingest_events(events, source="http")
        body = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": [{"index": index, "reason": reason} for index, reason in result.rejected],
        }
        all_bad = events and len(result.rejected) == len(events)
        return Response(body, status=status.HTTP_400_BAD_REQUEST if all_bad else status.HTTP_202_ACCEPTED)


def _queue(queue_id: str) -> Queue:
    return get_object_or_404(Queue, queue_id=queue_id)


def _step(queue_id: str, name: str) -> QueueRequest:
    return get_object_or_404(QueueRequest.objects.select_related("queue"), queue__queue_id=queue_id, name=name)


class RetryView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = (START_QUEUE, STOP_QUEUE)  # restarting work needs both

    @extend_schema(
        summary="Retry the failed, stopped and lost steps of a queue",
        request=None,
        responses={202: OpenApiResponse(description="`{\"retried\": n}`"), 409: OpenApiResponse(description="Nothing to retry.")},
    )
    def post(self, request, queue_id: str):
        count = services.queue_retry(queue=_queue(queue_id), user=request.user)
        if not count:
            return Response({"detail": "Nothing to retry: no failed, stopped or lost steps.", "retried": 0}, status=409)
        return Response({"retried": count}, status=status.HTTP_202_ACCEPTED)


class StepStopView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = STOP_QUEUE

    @extend_schema(summary="Stop one step (graceful, then forced). Idempotent.", request=None, responses={202: StepSerializer})
    def post(self, request, queue_id: str, name: str):
        step = services.step_stop(step=_step(queue_id, name), user=request.user)
        step.refresh_from_db()
        return Response(StepSerializer(step).data, status=status.HTTP_202_ACCEPTED)


class StepLogsView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE

    @extend_schema(
        summary="A step's logs",
        description="Live from the workload while it runs; the tail kept in the database once it ended.",
        parameters=[OpenApiParameter("tail_bytes", int, description="How much of the end to return (default 64 KiB).")],
        responses={200: OpenApiResponse(description="`{step, state, live, logs}`")},
    )
    def get(self, request, queue_id: str, name: str):
        step = _step(queue_id, name)
        try:
            tail = min(max(int(request.query_params.get("tail_bytes", settings.STEP_LOG_TAIL_BYTES)), 1), 1024 * 1024)
        except ValueError:
            return Response({"tail_bytes": ["Must be an integer."]}, status=400)
        return Response({"step": step.name, "state": step.state, **step_logs(step, tail_bytes=tail)})


def step_logs(step: QueueRequest, *, tail_bytes: int) -> dict:
    """Live logs while the workload exists, else the stored tail (shared by API and admin)."""
    if step.state in StepState.LAUNCHED or (step.launched_at and not step.logs):
        try:
            live = get_launcher().logs(step, tail_bytes=tail_bytes)
        except LaunchError as exc:
            live = ""
            if not step.logs:
                return {"live": False, "logs": "", "error": str(exc)}
        if live:
            return {"live": True, "logs": live}
    return {"live": False, "logs": step.logs[-tail_bytes:]}


class EventSerializer(serializers.ModelSerializer):
    step = serializers.CharField(source="step.name", default=None)

    class Meta:
        model = TelemetryEvent
        fields = ["id", "step", "producer", "status", "records_written", "message", "payload", "source", "sent_at", "received_at"]
        read_only_fields = fields


class QueueEventsView(generics.ListAPIView):
    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE
    serializer_class = EventSerializer
    filterset_class = None

    @extend_schema(
        summary="Telemetry events of a queue, newest first",
        parameters=[
            OpenApiParameter("step", str, description="Only this step's events."),
            OpenApiParameter("status", str, description="Only events with this status."),
        ],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no URL kwargs
            return TelemetryEvent.objects.none()
        queue = _queue(self.kwargs["queue_id"])
        events = TelemetryEvent.objects.filter(queue=queue).select_related("step")
        if step := self.request.query_params.get("step"):
            events = events.filter(step__name=step)
        if status_ := self.request.query_params.get("status"):
            events = events.filter(status=status_)
        return events
