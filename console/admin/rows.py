"""The queue list's rows, drawn with a column plan made once per page (issue #12).

Django's `result_list` resolves every cell through `lookup_field`, renders each row's action checkbox
through the form widget templates (three template renders per row) and reverses each row's link: at a
page of 50 that was most of the list's time. Here the columns are resolved once per page, a row's link
is the page's one reversed URL with the row's pk put in, and each cell is the admin's own display
method or Django's own field formatting, so a row reads exactly as Django would draw it
(tests/queues/test_admin_list_cost.py compares them cell for cell).

Anything this plan does not cover (list_editable, popups, relation columns, custom links) falls back
to Django's rendering.
"""
from __future__ import annotations

from django.contrib.admin.templatetags import admin_list
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import display_for_field, display_for_value, quote
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.urls import reverse
from django.utils.html import conditional_escape, escape, format_html
from django.utils.safestring import mark_safe
from django.utils.translation import gettext

from console.admin import display

_PK = "sf-row-pk"  # stands for the row's pk in the page's one reversed link


def result_list(cl) -> dict:
    """The context of Django's `result_list` tag, with the rows drawn by the page's column plan."""
    plan = _plan(cl)
    if plan is None:
        return admin_list.result_list(cl)
    headers = list(admin_list.result_headers(cl))
    return {
        "cl": cl,
        "result_hidden_fields": [],
        "result_headers": headers,
        "num_sorted_fields": sum(1 for h in headers if h["sortable"] and h["sorted"]),
        # One pre-drawn string per row: the template's per-cell loop then runs once per row.
        "results": [admin_list.ResultList(None, [_row(plan, obj)]) for obj in cl.result_list],
    }


def _row(plan, obj) -> str:
    return mark_safe("".join(cell(obj) for cell in plan))


def _plan(cl):
    """One function per column (obj -> the cell's HTML), or None where Django must draw the list."""
    admin = cl.model_admin
    if cl.formset is not None or cl.is_popup or cl.to_field:
        return None
    if list(cl.list_display_links or ()) != [_first_data_column(cl)]:
        return None  # Django links the first column; another choice is drawn by Django
    empty = admin.get_empty_value_display()
    link = _link(cl)
    plan = []
    linked = False
    for index, name in enumerate(cl.list_display):
        if name == "action_checkbox":
            plan.append(_checkbox)
            continue
        content = _content(cl, name, empty)
        if content is None:
            return None
        render, css = content
        css_attr = f' class="{" ".join(css)}"'
        if not linked:
            linked = True
            plan.append(_linked_cell(render, css_attr, link))
        else:
            plan.append(_cell(render, css_attr))
    return plan


def _first_data_column(cl):
    return next((name for name in cl.list_display if name != "action_checkbox"), None)


def _content(cl, name, empty):
    """(obj -> the cell's escaped content, CSS classes), as Django's items_for_result makes them."""
    admin, opts = cl.model_admin, cl.lookup_opts
    css = [f"field-{name}"]
    if not isinstance(name, str):
        return None
    try:
        field = opts.get_field(name)
    except FieldDoesNotExist:
        field = None
    if field is not None:
        if field.is_relation or field.auto_created:
            return None
        if isinstance(field, (models.DateField, models.TimeField)):
            css.append("nowrap")
        attname = field.attname
        if isinstance(field, models.DateTimeField):
            # The console's one time format, as display_for_field gives it, without re-parsing the format.
            return (lambda obj: conditional_escape(display.when(getattr(obj, attname)) or empty)), css
        return (lambda obj: conditional_escape(display_for_field(getattr(obj, attname), field, empty))), css
    method = getattr(admin, name, None)
    if not callable(method) or name == "__str__":
        return None
    empty = getattr(method, "empty_value_display", empty)
    boolean = getattr(method, "boolean", False)

    def render(obj):
        value = method(obj)
        if isinstance(value, str) and value.strip() == "":
            value = ""
        return conditional_escape(display_for_value(value, empty, boolean))

    return render, css


def _link(cl):
    """The change link of a row: (text before the pk, text after it), escaped, with the filters kept."""
    url = reverse(f"admin:{cl.opts.app_label}_{cl.opts.model_name}_change", args=(_PK,),
                  current_app=cl.model_admin.admin_site.name)
    url = add_preserved_filters({"preserved_filters": cl.preserved_filters, "opts": cl.opts}, url)
    before, after = str(escape(url)).split(_PK, 1)
    return before, after


def _linked_cell(render, css_attr, link):
    before, after = link

    def cell(obj):
        return f'<th{css_attr}><a href="{before}{escape(quote(obj.pk))}{after}">{render(obj)}</a></th>'

    return cell


def _cell(render, css_attr):
    return lambda obj: f"<td{css_attr}>{render(obj)}</td>"


def _checkbox(obj) -> str:
    # What forms.CheckboxInput renders for the bulk actions, without its three templates per row.
    label = format_html(gettext("Select this object for an action - {}"), str(obj))
    return (f'<td class="action-checkbox"><input type="checkbox" name="_selected_action" value="{escape(obj.pk)}" '
            f'class="action-select" aria-label="{label}"></td>')
