"""`{% queue_inline_rows inline_admin_formset as rows %}`: the queue page's inline rows (console/admin/inline_rows.py)."""
from __future__ import annotations

from django import template
from django.utils.safestring import mark_safe

from console.admin import inline_rows

register = template.Library()


@register.simple_tag
def queue_inline_rows(inline_admin_formset):
    rows = inline_rows.tbody_rows(inline_admin_formset)
    return None if rows is None else mark_safe(rows)
