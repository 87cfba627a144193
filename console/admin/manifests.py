"""Admin "dry run": the Kubernetes Jobs of a queue rendered as YAML, before or after starting it."""
from __future__ import annotations

import yaml
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse

from jobs.manifests import queue_manifests
from queues.models import Queue
from queues.permissions import VIEW_QUEUE


def queue_manifests_view(request, queue_id: str):
    if not request.user.has_perm(VIEW_QUEUE):
        raise PermissionDenied
    queue = get_object_or_404(Queue, queue_id=queue_id)
    manifests = queue_manifests(queue)
    documents = [
        {"job_name": m["metadata"]["name"], "yaml": yaml.safe_dump(m, sort_keys=False, default_flow_style=False)}
        for m in manifests
    ]
    context = {
        **admin.site.each_context(request),
        "title": f"Kubernetes Jobs of {queue.queue_id} (dry run)",
        "queue": queue,
        "opts": Queue._meta,
        "documents": documents,
        "all_yaml": yaml.safe_dump_all(manifests, sort_keys=False),
    }
    return TemplateResponse(request, "admin/queues/queue/manifests.html", context)
