"""OpenAPI documentation of the payload contract (DESIGN §3) and of the error responses.

These serializers only document; validation is `queues.contract.parse_payload`, the one place the
rules live (the catalogue decides which target takes which type and fields).
"""
from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers

from queues import catalogue
from queues.pipeline_templates import TEMPLATES, template_payload


_CODE_SPAN = re.compile(r"(`[^`]*`)")


def escape_markup_in_descriptions(result, generator, request, public):
    """drf-spectacular post-processing hook: `<` and `>` in descriptions as entities, outside code spans.

    ReDoc and Swagger UI render descriptions as Markdown that allows HTML, so `api_candles_<interval>`
    showed as `api_candles_` (`<interval>` taken for an unknown tag). Code spans are literal already.
    """

    def escape(text: str) -> str:
        parts = _CODE_SPAN.split(text)
        return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "description" and isinstance(value, str):
                    node[key] = escape(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(result)
    return result


def _targets_help() -> str:
    lines = []
    for name, target in catalogue.TARGETS.items():
        required = ", ".join(target.required) or "none"
        extra = "; ".join(f"{t}: also {', '.join(f)}" for t, f in target.required_by_type.items())
        lines.append(f"`{name}` — types {', '.join(target.types)}; required: {required}{'; ' + extra if extra else ''}")
    return "\n".join(f"- {line}" for line in lines)


class StepRequestDoc(serializers.Serializer):
    target = serializers.ChoiceField(choices=list(catalogue.TARGETS), help_text="The service to run.")
    type = serializers.CharField(
        help_text="Step type, one of: " + ", ".join(catalogue.STEP_TYPES)
        + ". `ws_*`, `realtime_*` and `graph_metrics_stream` stream until stopped; the others are batch."
    )
    name = serializers.CharField(
        required=False, help_text="Step name, unique in the queue (default: `{target}-{type}`, numbered if needed)."
    )
    depends_on = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Names of steps this one must wait for."
    )
    interval = serializers.ChoiceField(
        choices=list(catalogue.INTERVALS), required=False, help_text="Must agree with the interval in `type`."
    )
    collection_name = serializers.CharField(
        required=False,
        help_text="loader/connector: collection written (default `{base}_{type without api_}_{period}`).",
    )
    collection_inputs = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="graph-builder: collections read."
    )
    collection_output = serializers.CharField(required=False, help_text="graph-builder: graph collection written.")
    graph_collection = serializers.CharField(required=False, help_text="gnn-trainer: graph collection read.")
    model_output = serializers.CharField(required=False, help_text="gnn-trainer (gnn_train): model written.")
    inference_interval = serializers.CharField(
        required=False, help_text="gnn-trainer (realtime_gnn_infer): one of " + ", ".join(catalogue.INTERVALS) + "."
    )
    source = serializers.CharField(required=False, help_text="visualizer: collection read.")
    image = serializers.CharField(
        required=False,
        help_text="Container image overriding the catalogue's: from a registry in ALLOWED_IMAGE_REGISTRIES "
        "(default: the catalogue's own), any registry only with the permission `queues.override_image`.",
    )
    kafka_topic = serializers.CharField(
        required=False, help_text="loader/connector: topic (default `{queue_id}-{type}`, shared per type)."
    )


class PipelinePayloadDoc(serializers.Serializer):
    symbol = serializers.CharField(help_text="Exchange symbol, `[A-Z0-9]{2,20}`, e.g. BTCUSDT.")
    time_range = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="`YYYY-MM-DD:YYYY-MM-DD`, start ≤ end. Required for api_* types; optional for streaming queues.",
    )
    requests = StepRequestDoc(
        many=True, help_text="The steps, one Job each; at most MAX_STEPS_PER_QUEUE (default 100).\n\n" + _targets_help()
    )
    microservices = StepRequestDoc(
        many=True, required=False, help_text="Deprecated alias of `requests` (the original service's key)."
    )
    queue_id = serializers.CharField(
        required=False,
        help_text="Optional client id: lower-case DNS-1123 label, ≤ 40 chars. Resubmitting the same id with "
        "the same payload returns the existing queue (200); with another payload, 409.",
    )


PAYLOAD_EXAMPLES = [
    OpenApiExample(name, summary=summary, value=template_payload(name), request_only=True)
    for name, summary in TEMPLATES.items()
]

FIELD_ERRORS_RESPONSE = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description="Invalid payload: each field path maps to a list of messages. Nothing was created.",
    examples=[
        OpenApiExample(
            "Missing field",
            value={"requests[4].collection_output": ["This field is required for target graph-builder (gnn_graph)."]},
            response_only=True,
            status_codes=["400"],
        )
    ],
)


class ConflictDoc(serializers.Serializer):
    detail = serializers.CharField()
    queue_id = serializers.CharField()


CONFLICT_RESPONSE = OpenApiResponse(
    response=ConflictDoc, description="A queue with this queue_id exists with a different payload."
)


class DetailDoc(serializers.Serializer):
    detail = serializers.CharField()


class StopRequestDoc(serializers.Serializer):
    queue_id = serializers.CharField()


class TemplateDoc(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    payload = PipelinePayloadDoc()
