"""Bulk stop and retry from the queue list, always through a confirmation page listing what they affect.

The first POST (the admin action) renders the confirmation; only the second, carrying `post=yes`, acts.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from jobs import services
from console.admin.live import queue_can_stop
from queues.history import Origin
from queues.models import QueueRequest, StepState


def _confirm(model_admin, request, queryset, *, action: str, title: str, verb: str, rows, affected: int):
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "action": action,
        "verb": verb,
        "rows": rows,
        "affected": affected,
        "queryset": queryset,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "select_across": request.POST.get("select_across", "0"),
    }
    return TemplateResponse(request, "admin/queues/queue/bulk_confirm.html", context)


def stop_selected(model_admin, request, queryset):
    queues = list(queryset.order_by("pk"))
    if request.POST.get("post") != "yes":
        rows = [(q, queue_can_stop(q), "will be stopped" if queue_can_stop(q) else f"skipped: already {q.status}")
                for q in queues]  # fmt: skip
        return _confirm(model_admin, request, queryset, action="stop_selected", title="Stop these queues?",
                        verb="Stop", rows=rows, affected=sum(1 for _, ok, _ in rows if ok))  # fmt: skip
    stopped = 0
    for queue in queues:
        if queue_can_stop(queue):
            services.queue_stop(queue=queue, origin=Origin.http(request, source="admin"))
            stopped += 1
    model_admin.message_user(request, f"Stop requested for {stopped} queue(s).", messages.SUCCESS)
    if skipped := len(queues) - stopped:
        model_admin.message_user(request, f"{skipped} queue(s) were already finished or stopping.", messages.WARNING)
    return None


def retry_selected(model_admin, request, queryset):
    queues = list(queryset.order_by("pk"))
    if request.POST.get("post") != "yes":
        retryable: dict[int, list[str]] = {}
        for step in QueueRequest.objects.filter(queue__in=queues, state__in=StepState.RETRYABLE).order_by("position"):
            retryable.setdefault(step.queue_id, []).append(f"{step.name} ({step.state})")
        rows = [(q, bool(retryable.get(q.pk)), "retries " + ", ".join(retryable[q.pk]) if retryable.get(q.pk)
                 else "skipped: no failed, stopped or lost step") for q in queues]  # fmt: skip
        return _confirm(model_admin, request, queryset, action="retry_selected", title="Retry steps of these queues?",
                        verb="Retry", rows=rows, affected=sum(1 for _, ok, _ in rows if ok))  # fmt: skip
    retried = {queue.queue_id: services.queue_retry(queue=queue, origin=Origin.http(request, source="admin")) for queue in queues}
    count = sum(1 for n in retried.values() if n)
    model_admin.message_user(request, f"Retrying {sum(retried.values())} step(s) in {count} queue(s).", messages.SUCCESS)
    if nothing := sorted(queue_id for queue_id, n in retried.items() if not n):
        model_admin.message_user(request, f"Nothing to retry in: {', '.join(nothing)}.", messages.INFO)
    return None
