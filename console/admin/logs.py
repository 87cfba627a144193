"""The step page's log endpoint: incremental reads by offset (follow) and a download of the whole log."""
from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404

from queues.models import QueueRequest

logger = logging.getLogger(__name__)


def step_log_view(model_admin):
    def view(request, object_id):
        from jobs.log_stream import step_log_full, step_log_since

        step = get_object_or_404(QueueRequest.objects.select_related("queue"), pk=object_id)
        if not model_admin.has_view_permission(request, step):
            raise PermissionDenied
        if request.GET.get("download"):
            response = HttpResponse(step_log_full(step), content_type="text/plain; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{step.job_name}-run{step.run}.log"'
            return response
        try:
            offset = max(int(request.GET.get("offset", 0)), 0)
        except ValueError:
            return JsonResponse({"offset": ["Must be an integer."]}, status=400)
        try:
            chunk = step_log_since(step, offset=offset)
        except Exception as exc:  # the page keeps following when the launcher is briefly unreachable
            logger.exception("step log read failed", extra={"job_name": step.job_name})
            chunk = {"source": "none", "offset": offset, "next": offset, "text": "", "more": False,
                     "error": f"{type(exc).__name__}: {exc}"}
        return JsonResponse({**chunk, "state": step.state, "ended": step.is_terminal})

    return view
