"""The queue list's per-row figures (step counts, last failure), computed for the shown page only.

Counting with an annotation would group every step of every queue before paging; here it is one query
over the steps of the (at most `list_per_page`) queues shown, so the list costs the same at any history size.
"""
from __future__ import annotations

from collections import defaultdict

from django.contrib.admin.views.main import ChangeList
from django.db.models import Count

from console.admin.progress import QueueCounts
from queues.models import QueueRequest, StepState


class QueueChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        attach_step_figures(self.result_list)


def attach_step_figures(queues) -> None:
    """Set `step_counts` (QueueCounts) and `last_failure` (str) on each queue of the page."""
    queues = list(queues)
    ids = [queue.pk for queue in queues]
    states: dict[int, list[str]] = defaultdict(list)
    for row in QueueRequest.objects.filter(queue_id__in=ids).values("queue_id", "state").annotate(n=Count("id")):
        states[row["queue_id"]].extend([row["state"]] * row["n"])
    failures: dict[int, str] = {}
    failed = (
        QueueRequest.objects.filter(queue_id__in=ids, state__in=(*StepState.FAILED_STATES, StepState.STOPPED))
        .exclude(message="")
        .order_by("queue_id", "-state_changed_at")
        .distinct("queue_id")
        .values_list("queue_id", "name", "message")
    )
    for queue_id, name, message in failed:
        failures[queue_id] = f"{name}: {message}"
    for queue in queues:
        queue.step_counts = QueueCounts.of(states.get(queue.pk, []))
        queue.last_failure = failures.get(queue.pk, "")
