"""The admin's "Start a queue" page: paste a payload or pick a built-in template, then submit.

It calls the same service as the API; a PayloadError is shown on the form, one line per field path.
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from jobs import submission
from queues.contract import PayloadError
from queues.history import Origin
from console.forms import StartQueueForm
from queues.permissions import START_QUEUE
from queues.pipeline_templates import TEMPLATES, template_payload


def _around(text: str, at: int | None, width: int = 60) -> tuple[str, str, str] | None:
    """The text before, at and after a JSON error's position, on its line, to show where it is."""
    if at is None:
        return None
    begin = max(text.rfind("\n", 0, at) + 1, at - width)
    end = text.find("\n", at)
    end = min(len(text) if end < 0 else end, at + width)
    return text[begin:at], text[at:at + 1], text[at + 1:end]


def start_queue_view(model_admin):
    def view(request):
        if not request.user.has_perm(START_QUEUE):
            raise PermissionDenied
        payload_errors: dict[str, list[str]] = {}
        if request.method == "POST":
            form = StartQueueForm(request.POST)
            if form.is_valid():
                try:
                    queue, created = submission.queue_create(
                        payload=form.cleaned_data["payload"],
                        queue_id=form.cleaned_data["queue_id"],
                        origin=Origin.http(request, source="admin"),
                    )
                except PayloadError as exc:
                    payload_errors = exc.errors
                    if "queue_id" in payload_errors:
                        form.add_error("queue_id", payload_errors["queue_id"])
                    form.add_error(None, "The payload is not valid; nothing was created. See the errors below.")
                except submission.QueueConflict as exc:
                    form.add_error("queue_id", str(exc))
                else:
                    if created:
                        model_admin.message_user(
                            request, f"Queue {queue.queue_id} created with {queue.steps.count()} steps.", messages.SUCCESS
                        )
                    else:
                        model_admin.message_user(
                            request, f"Queue {queue.queue_id} already existed with this payload; nothing new was created.",
                            messages.INFO,
                        )
                    return HttpResponseRedirect(reverse("admin:queues_queue_change", args=[queue.pk]))
        else:
            form = StartQueueForm(initial=StartQueueForm.initial_for(request.GET.get("template")))
        context = {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.opts,
            "title": "Start a queue",
            "form": form,
            "payload_errors": sorted(payload_errors.items()),
            "json_error_at": getattr(form, "json_error_at", None),
            "json_error_context": _around(request.POST.get("payload", ""), getattr(form, "json_error_at", None)),
            "templates_json": {name: json.dumps(template_payload(name), indent=2) for name in TEMPLATES},
            "catalogue_url": reverse("catalogue"),
            "docs_url": reverse("swagger-ui"),
        }
        return TemplateResponse(request, "admin/queues/queue/start.html", context)

    return view
