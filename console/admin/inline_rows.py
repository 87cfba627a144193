"""The queue page's step and edge rows, drawn once per column plan rather than through the template engine.

Django's edit_inline/tabular.html walks each row's fieldsets, lines and fields in the template engine,
builds a readonly-field helper per cell (its label and help text looked up again for every row) and
renders each row's two hidden inputs through three widget templates: about a millisecond per row, most
of the queue page's time (issue #12). Here the columns are taken once from the first row, each cell is
the same helper's `contents()` for the row's form, and the rows read character for character as the
template draws them (tests/queues/test_console.py compares the two).

Anything the plan does not cover (errors, add or delete rights, change or site links, editable fields)
returns None and the page falls back to Django's template.
"""
from __future__ import annotations

from django.forms import HiddenInput
from django.utils.html import conditional_escape, format_html

_ROW = (
    '\n        \n        <tr class="form-row has_original"\n             id="{prefix}-{index}">\n'
    '        <td class="original">\n          <p>\n          \n          {original}\n          \n'
    "          \n          \n            </p>\n          {pk}\n          {fk}\n        </td>\n        {fieldsets}\n"
    '        <td class="delete"></td>\n        </tr>\n     '
)
# The template's loops over a row's fieldsets, their lines and the lines' fields, with its whitespace.
_FIELDSET, _LINE = "\n          {}\n        ", "\n            {}\n          "
_CELL = (
    '\n              <td class="field-{name}">\n              \n                  <p>{contents}</p>\n'
    "              \n              </td>\n            "
)


def tbody_rows(inline_admin_formset) -> str | None:
    """The rows inside the inline's <tbody>, as tabular.html draws them, or None where Django must."""
    formset = inline_admin_formset.formset
    if inline_admin_formset.has_add_permission or formset.can_delete or inline_admin_formset.opts.show_change_link:
        return None
    rows, plan = [], None
    for index, admin_form in enumerate(inline_admin_formset):
        form = admin_form.form
        if form.non_field_errors() or admin_form.show_url or not admin_form.original:
            return None
        if plan is None:  # [fieldset: [line: [column]]], taken from the first row
            plan = [[list(line) for line in fieldset] for fieldset in admin_form]
            columns = [column for fieldset in plan for line in fieldset for column in line]
            if not all(column.is_readonly and column.field["name"] and not column.field["is_hidden"] for column in columns):
                return None
        fieldsets = "".join(
            _FIELDSET.format("".join(_LINE.format("".join(_cell(column, form) for column in line)) for line in fieldset))
            for fieldset in plan
        )
        rows.append(_ROW.format(
            prefix=formset.prefix, index=index, original=conditional_escape(admin_form.original), fieldsets=fieldsets,
            pk=_hidden(admin_form.pk_field().field) if admin_form.needs_explicit_pk_field() else "",
            fk=_hidden(admin_form.fk_field().field) if admin_form.fk_field() else "",
        ))  # fmt: skip
    return "".join(rows)


def _cell(column, form) -> str:
    # One helper per column: only its form (whose instance is the row's object) changes from row to row.
    column.form = form
    return _CELL.format(name=column.field["name"], contents=column.contents())


def _hidden(bound_field) -> str:
    """What HiddenInput's templates render for a bound field with no attributes of its own."""
    field = bound_field.field
    widget, value = field.widget, field.widget.format_value(bound_field.value())
    if type(widget) is not HiddenInput or widget.attrs or field.disabled or value is None or not bound_field.auto_id:
        return str(bound_field)
    return format_html('<input type="hidden" name="{}" value="{}" id="{}">', bound_field.html_name, value, bound_field.auto_id)
