"""`{% queue_result_list cl %}`: Django's `result_list` with the queue list's cheaper rows (console/admin/rows.py)."""
from __future__ import annotations

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode

from console.admin import rows

register = template.Library()


@register.tag(name="queue_result_list")
def queue_result_list_tag(parser, token):
    return InclusionAdminNode(parser, token, func=rows.result_list, template_name="change_list_results.html",
                              takes_context=False)
