"""The queue page's live state (polled as JSON) and its control buttons: retry a queue, stop one step.

Each view re-reads its rows, checks the same permissions as the API and calls the same services.
"""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from jobs import services
from console.admin.live import queue_can_retry, queue_can_stop, queue_live, step_can_stop  # noqa: F401 (used by pages)
from queues.history import Origin
from queues.models import Queue, QueueRequest, StepState
from queues.permissions import START_QUEUE, STOP_QUEUE

STOP_PERMS = (STOP_QUEUE,)
RETRY_PERMS = (STOP_QUEUE, START_QUEUE)  # as the API's RetryView: restarting is privileged


def may_stop(user) -> bool:
    return user.has_perms(STOP_PERMS)


def may_retry(user) -> bool:
    return user.has_perms(RETRY_PERMS)


def queue_live_view(model_admin):
    def view(request, object_id):
        queue = get_object_or_404(Queue, pk=object_id)
        if not model_admin.has_view_permission(request, queue):
            raise PermissionDenied
        return JsonResponse(queue_live(queue))  # admin_view already marks it never_cache

    return view


def _back(request, default: str) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        target = default
    return HttpResponseRedirect(target)


def queue_retry_view(model_admin):
    @require_POST
    def view(request, object_id):
        queue = get_object_or_404(Queue, pk=object_id)
        if not may_retry(request.user):
            raise PermissionDenied
        count = services.queue_retry(queue=queue, origin=Origin.http(request, source="admin"))
        if count:
            model_admin.message_user(request, f"Retrying {count} step(s) of {queue.queue_id} (failed, stopped or lost).", messages.SUCCESS)
        else:
            model_admin.message_user(request, f"Nothing to retry in {queue.queue_id}: no failed, stopped or lost steps.", messages.INFO)
        return _back(request, reverse("admin:queues_queue_change", args=[queue.pk]))

    return view


def step_stop_view(model_admin):
    @require_POST
    def view(request, object_id):
        step = get_object_or_404(QueueRequest.objects.select_related("queue"), pk=object_id)
        if not may_stop(request.user):
            raise PermissionDenied
        if not step_can_stop(step):
            model_admin.message_user(request, f"Step {step.name} is already {step.state}; nothing to stop.", messages.INFO)
        else:
            was_waiting = step.state == StepState.WAITING
            services.step_stop(step=step, origin=Origin.http(request, source="admin"))
            text = "cancelled (it had not been launched)" if was_waiting else "is stopping (graceful, then forced)"
            model_admin.message_user(request, f"Step {step.name} of {step.queue.queue_id} {text}.", messages.SUCCESS)
        return _back(request, reverse("admin:queues_queue_change", args=[step.queue_id]))

    return view
