"""The admin's "Start a queue" form: a payload as JSON, optionally from a built-in template."""
from __future__ import annotations

import json

from django import forms

from queues import naming
from queues.pipeline_templates import TEMPLATES, template_payload


class StartQueueForm(forms.Form):
    template = forms.ChoiceField(
        choices=[("", "— paste your own payload —")] + [(name, f"{name}: {text}") for name, text in TEMPLATES.items()],
        required=False,
        help_text="Picking a template replaces the payload below with it.",
    )
    payload = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 28, "cols": 90, "spellcheck": "false", "class": "vLargeTextField payload-json"}),
        help_text='The pipeline payload: {"symbol": ..., "time_range": ..., "requests": [...]}.',
    )
    queue_id = forms.CharField(
        required=False,
        max_length=naming.QUEUE_ID_MAX,
        help_text="Optional. Lower-case letters, digits and '-', at most 40 characters; generated when empty. "
        "Submitting the same id and payload again returns the existing queue.",
    )

    @classmethod
    def initial_for(cls, template: str | None) -> dict:
        if template in TEMPLATES:
            return {"template": template, "payload": json.dumps(template_payload(template), indent=2)}
        return {}

    json_error_at: int | None = None  # character offset of a JSON syntax error, for the page to mark it

    def clean_payload(self) -> dict:
        text = self.cleaned_data["payload"]
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.json_error_at = exc.pos
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None

    def clean_queue_id(self) -> str | None:
        return self.cleaned_data["queue_id"].strip() or None
