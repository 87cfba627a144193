"""Orchestration API: telemetry in, retry, per-step stop, events and logs of a queue's steps."""
from __future__ import annotations

import hmac

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.credentials import StepCredential, step_credential_read
from jobs.launchers import LaunchError, get_launcher
from jobs.telemetry import ingest_events
from jobs import services
from api.filters import EventFilter
from api.parsers import JSONParser
from api.permissions import HasQueuePermission
from queues.permissions import INGEST_TELEMETRY, START_QUEUE, STOP_QUEUE, VIEW_QUEUE
from api.serializers import StepSerializer
from queues.history import Origin
from queues.models import Queue, QueueRequest, StepState, TelemetryEvent

MAX_TELEMETRY_BATCH = 5000


class WorkerPrincipal:
    """A worker that presented the shared TELEMETRY_TOKEN (legacy, opt-in): telemetry for any step."""

    is_authenticated = True
    is_active = True
    username = "worker"
    pk = None

    def has_perm(self, perm: str, obj=None) -> bool:
        return perm == INGEST_TELEMETRY


class StepPrincipal(WorkerPrincipal):
    """A step run that presented its own credential: telemetry for that step and run only."""

    def __init__(self, credential: StepCredential):
        self.credential = credential
        self.username = f"step:{credential.queue_id}/{credential.telemetry_id}#{credential.run}"

    def names(self, event) -> bool:
        """Whether `event` is about this step run: every identifying field it carries must match."""
        if not isinstance(event, dict):
            return False
        own = self.credential
        producers = [event[key] for key in ("producer", "telemetry_id") if event.get(key) is not None]
        run = event.get("run")
        return (
            event.get("queue_id") == own.queue_id
            and bool(producers)
            and all(producer == own.telemetry_id for producer in producers)
            and (run is None or (type(run) is int and run == own.run))
        )


class TelemetryTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <credential>`: a step's own credential, or the legacy shared token if allowed."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if len(header) != 2 or header[0].lower() != b"bearer":
            return None
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid telemetry credential.") from None
        credential = step_credential_read(token=token)
        if credential is not None:
            return StepPrincipal(credential), None
        shared = settings.TELEMETRY_TOKEN.encode()
        if settings.TELEMETRY_SHARED_TOKEN_ALLOWED and shared and hmac.compare_digest(header[1], shared):
            return WorkerPrincipal(), None
        raise AuthenticationFailed("Invalid telemetry credential.")

    def authenticate_header(self, request):
        return "Bearer"


class TelemetryTokenScheme(OpenApiAuthenticationExtension):
    target_class = TelemetryTokenAuthentication
    name = "telemetryToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A step's own credential (MANAGER_TELEMETRY_TOKEN / MANAGER_TELEMETRY_TOKEN_FILE); "
            "the shared TELEMETRY_TOKEN only with TELEMETRY_SHARED_TOKEN_ALLOWED.",
        }


class CanIngestTelemetry(BasePermission):
    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.has_perm(INGEST_TELEMETRY))


class ReportsOnlyItsOwnStep(BasePermission):
    """A step credential reports for its step's current run only; users and the legacy token for any.

    The whole request is refused (403, with the indexes of the foreign events) rather than the
    foreign events dropped: a worker sending another step's events is misconfigured or hostile, and
    a partial 202 would hide that.
    """

    def has_permission(self, request, view) -> bool:
        principal = request.user
        if not isinstance(principal, StepPrincipal):
            return True
        own = principal.credential
        current_run = (
            QueueRequest.objects.filter(queue__queue_id=own.queue_id, telemetry_id=own.telemetry_id)
            .values_list("run", flat=True)
            .first()
        )
        if current_run != own.run:
            self.message = "This credential is not for the step's current run."
            return False
        events = request.data if isinstance(request.data, list) else [request.data]
        foreign = [index for index, event in enumerate(events) if not principal.names(event)]
        if foreign:
            raise ForeignEvents(foreign)
        return True


class ForeignEvents(PermissionDenied):
    def __init__(self, indexes: list[int]):
        super().__init__()
        # Set after init: DRF would turn the indexes into strings.
        self.detail = {
            "detail": "A step's credential reports only that step's events (queue_id, producer/telemetry_id, run).",
            "foreign_events": indexes,
        }


class IngestResultDoc(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.ListField(child=serializers.DictField())


class TelemetryView(APIView):
    authentication_classes = [TelemetryTokenAuthentication, *APIView.authentication_classes]
    permission_classes = [CanIngestTelemetry, ReportsOnlyItsOwnStep]
    parser_classes = [JSONParser]

    @extend_schema(
        summary="Report worker telemetry",
        description=(
            "One event or a list of events in the `queue-events` format (either field dialect). "
            "A step authenticates with `Authorization: Bearer <its own credential>` and may report only "
            "its own events (else 403 with `foreign_events`); users need `queues.add_telemetryevent` and "
            "may report for any step. Duplicates are ignored. 400 if no event could be used."
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
        count = services.queue_retry(queue=_queue(queue_id), origin=Origin.http(request, source="api"))
        if not count:
            return Response({"detail": "Nothing to retry: no failed, stopped or lost steps.", "retried": 0}, status=409)
        return Response({"retried": count}, status=status.HTTP_202_ACCEPTED)


class StepStopView(APIView):
    permission_classes = [HasQueuePermission]
    required_permission = STOP_QUEUE

    @extend_schema(summary="Stop one step (graceful, then forced). Idempotent.", request=None, responses={202: StepSerializer})
    def post(self, request, queue_id: str, name: str):
        step = services.step_stop(step=_step(queue_id, name), origin=Origin.http(request, source="api"))
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
        fields = [
            "id", "step", "producer", "status", "records_written", "message", "payload", "source", "sent_at", "received_at",
            "coalesced",  # > 1: that many plain progress reports of one batch (the last one's payload)
        ]
        read_only_fields = fields


class QueueEventsView(generics.ListAPIView):
    permission_classes = [HasQueuePermission]
    required_permission = VIEW_QUEUE
    serializer_class = EventSerializer
    filterset_class = EventFilter  # validated filters: bad input (e.g. NUL) is a 400, not a database error

    @extend_schema(summary="Telemetry events of a queue, newest first")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no URL kwargs
            return TelemetryEvent.objects.none()
        queue = _queue(self.kwargs["queue_id"])
        return TelemetryEvent.objects.filter(queue=queue).select_related("step")
