"""The payload contract (DESIGN §3): validate a submitted payload into a PipelineSpec.

`parse_payload()` is the single entry point used by the API, the admin and the Kafka consumer.
Every problem is collected with the path of the offending field (`requests[4].collection_output`),
so a client sees all of them at once; nothing is created unless the whole payload is valid.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings

from queues import catalogue, images, naming
from queues.graph import Edge, infer_edges

TOP_LEVEL_KEYS = ("symbol", "time_range", "requests", "microservices", "queue_id")
# Patterns are applied with fullmatch only: `$` also matches before a final newline, so
# `re.match(r"^…$")` accepted `"abc\n"` as a queue_id, a step name or a time range.
_DATE_RANGE = re.compile(r"(\d{4}-\d{2}-\d{2}):(\d{4}-\d{2}-\d{2})", re.ASCII)
_COLLECTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_STEP_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?")


class PayloadError(Exception):
    """The payload is invalid; `errors` maps a field path to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class StepSpec:
    index: int
    target: str
    type: str
    name: str
    streaming: bool
    request: dict  # the request as submitted
    interval: str | None = None
    collection_name: str | None = None
    collection_inputs: list[str] = field(default_factory=list)
    collection_output: str | None = None
    model_output: str | None = None
    graph_collection: str | None = None
    inference_interval: str | None = None
    source: str | None = None
    image: str | None = None
    kafka_topic: str | None = None  # explicit topic; the default needs the queue_id
    depends_on: list[str] = field(default_factory=list)

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def target_spec(self) -> catalogue.Target:
        return catalogue.TARGETS[self.target]

    @property
    def uses_topic(self) -> bool:
        return self.target_spec.topic_role is not None

    def reads(self) -> list[str]:
        return _field_values(self, self.target_spec.reads)

    def writes(self) -> list[str]:
        return _field_values(self, self.target_spec.writes)


def _field_values(step: StepSpec, fields: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in fields:
        value = getattr(step, name)
        values.extend(value if isinstance(value, list) else [value] if value else [])
    return values


@dataclass
class PipelineSpec:
    symbol: str
    start: date | None
    end: date | None
    steps: list[StepSpec]
    edges: list[Edge]
    warnings: list[str]
    queue_id: str | None
    canonical: dict  # the payload normalised for idempotency comparisons

    @property
    def time_range(self) -> str | None:
        return f"{self.start.isoformat()}:{self.end.isoformat()}" if self.start and self.end else None

    def topic_for(self, step: StepSpec, queue_id: str) -> str | None:
        if not step.uses_topic:
            return step.kafka_topic
        return step.kafka_topic or naming.kafka_topic(queue_id, step.type)


class _Errors:
    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.items.setdefault(path, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.items)


def parse_payload(payload: object, *, queue_id: str | None = None, user=None) -> PipelineSpec:
    """Validate `payload` and return the pipeline it describes, or raise PayloadError.

    `user` is who submits it (None for Kafka commands): an `image` outside ALLOWED_IMAGE_REGISTRIES
    needs their `queues.override_image` permission.
    """
    errors = _Errors()
    if not isinstance(payload, dict):
        raise PayloadError({"non_field_errors": ["The payload must be a JSON object."]})

    for key in payload:
        if key not in TOP_LEVEL_KEYS:
            errors.add(key, f"Unknown field. Allowed: {', '.join(k for k in TOP_LEVEL_KEYS)}.")

    symbol = _parse_symbol(payload.get("symbol"), errors)
    start, end = _parse_time_range(payload.get("time_range"), errors)
    queue_id = _parse_queue_id(queue_id if queue_id is not None else payload.get("queue_id"), errors)

    if "requests" in payload and "microservices" in payload:
        errors.add("microservices", "Give the steps under `requests` or `microservices`, not both.")
    key = "requests" if "requests" in payload or "microservices" not in payload else "microservices"
    raw_requests = payload.get(key)
    steps: list[StepSpec] = []
    unparsed_names: set[str] = set()  # names of requests that failed: depending on them is not "unknown"
    if raw_requests is None:
        errors.add(key, "This field is required.")
    elif not isinstance(raw_requests, list):
        errors.add(key, "Must be a list of step requests.")
    elif not raw_requests:
        errors.add(key, "At least one request is required.")
    elif len(raw_requests) > settings.MAX_STEPS_PER_QUEUE:
        # Checked before anything else is parsed: the cost of validation and of the graph follows it.
        errors.add(
            key,
            f"Too many steps: {len(raw_requests)}; a queue has at most {settings.MAX_STEPS_PER_QUEUE} "
            f"(MAX_STEPS_PER_QUEUE). Split the pipeline into several queues.",
        )
    else:
        for index, raw in enumerate(raw_requests):
            step = _parse_request(index, raw, f"{key}[{index}]", errors)
            if step is not None:
                steps.append(step)
            else:
                unparsed_names.update(_names_of_unparsed(raw))

    if steps and any(catalogue.STEP_TYPES[catalogue.type_family(s.type)].needs_time_range for s in steps):
        if start is None and "time_range" not in errors.items:
            errors.add("time_range", "Required for historical (api_*) types: YYYY-MM-DD:YYYY-MM-DD.")

    _check_image_registries(steps, key, user, errors)
    # Every problem at once (issue #15 §10): the graph checks run over the steps that parsed even
    # when other fields failed, so a user fixing the payload does not meet a cycle only at the end.
    _assign_step_names(steps, key, errors)
    for step in steps:
        if step.collection_name is None and step.target_spec.topic_role:
            step.collection_name = naming.default_collection(symbol, step.type, start, end)

    edges, warnings, problems = infer_edges(steps, key, unparsed_names=unparsed_names)
    for path, message in problems:
        errors.add(path, message)
    if errors:
        raise PayloadError(errors.items)

    canonical = {
        "symbol": symbol,
        "time_range": f"{start}:{end}" if start else None,
        "requests": [s.request for s in steps],
    }
    return PipelineSpec(symbol, start, end, steps, edges, warnings, queue_id, canonical)


def canonical_json(canonical: dict) -> str:
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def _parse_symbol(value: object, errors: _Errors) -> str:
    if value is None:
        errors.add("symbol", "This field is required.")
        return ""
    if not isinstance(value, str) or not naming.is_symbol(value.strip().upper()):
        errors.add("symbol", "Must be an exchange symbol of 2-20 characters A-Z, 0-9 (e.g. BTCUSDT).")
        return ""
    return value.strip().upper()


def _parse_time_range(value: object, errors: _Errors) -> tuple[date | None, date | None]:
    if value is None:
        return None, None
    match = _DATE_RANGE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        errors.add("time_range", "Must be YYYY-MM-DD:YYYY-MM-DD.")
        return None, None
    try:
        start, end = date.fromisoformat(match[1]), date.fromisoformat(match[2])
    except ValueError as exc:
        errors.add("time_range", f"Not a valid date: {exc}.")
        return None, None
    if start > end:
        errors.add("time_range", "The start date must not be after the end date.")
        return None, None
    return start, end


def _parse_queue_id(value: object, errors: _Errors) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not naming.is_dns1123_label(value, naming.QUEUE_ID_MAX):
        errors.add(
            "queue_id",
            f"Must be a lower-case DNS-1123 label (a-z, 0-9, '-', starting and ending with a letter "
            f"or digit) of at most {naming.QUEUE_ID_MAX} characters.",
        )
        return None
    return value


def _parse_request(index: int, raw: object, path: str, errors: _Errors) -> StepSpec | None:
    if not isinstance(raw, dict):
        errors.add(path, "Each request must be a JSON object.")
        return None
    before = len(errors.items)
    target_name, type_name = raw.get("target"), raw.get("type")
    target = None
    if not isinstance(target_name, str) or not target_name:
        errors.add(f"{path}.target", "This field is required.")
    elif target_name not in catalogue.TARGETS:
        errors.add(f"{path}.target", f"Unknown target {target_name!r}. Known: {', '.join(catalogue.TARGETS)}.")
    else:
        target = catalogue.TARGETS[target_name]

    family = None
    if not isinstance(type_name, str) or not type_name:
        errors.add(f"{path}.type", "This field is required.")
    elif catalogue.type_family(type_name) is None:
        errors.add(f"{path}.type", f"Unknown type {type_name!r}. Known: {', '.join(catalogue.STEP_TYPES)}.")
    elif target is not None:
        family = target.type_family(type_name)
        if family is None:
            errors.add(
                f"{path}.type", f"Target {target.name} does not take type {type_name!r}; it takes {', '.join(target.types)}."
            )

    known = set(catalogue.ALL_FIELDS) | set(catalogue.COMMON_FIELDS)
    for key in raw:
        if key not in known:
            errors.add(f"{path}.{key}", "Unknown field.")
        elif target is not None and key not in target.allowed_fields:
            errors.add(f"{path}.{key}", f"Not accepted by target {target.name}.")
    if target is not None and family is not None:
        for key in target.required_for(family):
            if raw.get(key) in (None, "", []):
                errors.add(f"{path}.{key}", f"This field is required for target {target.name} ({type_name}).")

    values = {key: _check_field(key, raw[key], f"{path}.{key}", errors) for key in raw if key in known}
    if family is not None and "interval" in raw and isinstance(raw["interval"], str):
        _check_interval(type_name, family, raw["interval"], f"{path}.interval", errors)
    if len(errors.items) != before or target is None or family is None:
        return None
    return StepSpec(
        index=index,
        target=target.name,
        type=type_name,
        name=values.get("name") or "",
        streaming=catalogue.STEP_TYPES[family].streaming,
        request=dict(raw),
        interval=values.get("interval") or catalogue.type_interval(type_name),
        collection_name=values.get("collection_name"),
        collection_inputs=values.get("collection_inputs") or [],
        collection_output=values.get("collection_output"),
        model_output=values.get("model_output"),
        graph_collection=values.get("graph_collection"),
        inference_interval=values.get("inference_interval"),
        source=values.get("source"),
        image=values.get("image"),
        kafka_topic=values.get("kafka_topic"),
        depends_on=values.get("depends_on") or [],
    )


def _check_field(key: str, value: object, path: str, errors: _Errors):
    if key in catalogue.LIST_FIELDS:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            errors.add(path, "Must be a list of non-empty strings.")
            return None
        if len(set(value)) != len(value):
            errors.add(path, "Contains duplicates.")
        pattern = _STEP_NAME if key == "depends_on" else _COLLECTION
        for item in value:
            if not pattern.fullmatch(item):
                errors.add(path, f"{item!r} is not a valid {'step' if key == 'depends_on' else 'collection'} name.")
        return value
    if not isinstance(value, str) or not value:
        errors.add(path, "Must be a non-empty string.")
        return None
    checks = {
        "target": None,
        "type": None,
        "name": (_STEP_NAME, "Must be lower-case letters, digits and '-', at most 50 characters."),
        "interval": (None, None),
        "inference_interval": (None, None),
        "kafka_topic": (_TOPIC, "Must be a Kafka topic name (letters, digits, '.', '_', '-')."),
    }
    check = checks.get(key, (_COLLECTION, "Must be a collection name (a letter, then letters, digits, '_' or '-')."))
    if key in ("interval", "inference_interval"):
        if value not in catalogue.INTERVALS:
            errors.add(path, f"Unknown interval {value!r}. Known: {', '.join(catalogue.INTERVALS)}.")
    elif key == "image":
        if not images.is_valid(value):
            errors.add(path, "Must be a container image reference ([registry/]path[:tag][@digest]).")
    elif check is not None and check[0] is not None and not check[0].fullmatch(value):
        errors.add(path, check[1])
    return value


def _check_interval(type_name: str, family: str, interval: str, path: str, errors: _Errors) -> None:
    implied = catalogue.type_interval(type_name)
    if implied is not None and interval != implied:
        errors.add(path, f"Contradicts type {type_name!r}, which implies interval {implied!r}.")
    elif implied is None and catalogue.STEP_TYPES[family].market_data:
        errors.add(path, f"Type {type_name!r} has no interval.")


def _check_image_registries(steps: list[StepSpec], key: str, user, errors: _Errors) -> None:
    """An image from outside the allowed registries needs `queues.override_image` (DESIGN §11)."""
    foreign = [step for step in steps if step.image and not images.is_from_allowed_registry(step.image)]
    if not foreign or images.may_override(user):
        return
    allowed = ", ".join(settings.ALLOWED_IMAGE_REGISTRIES) or "none"
    for step in foreign:
        errors.add(
            f"{key}[{step.index}].image",
            f"Images may only come from the allowed registries ({allowed}); another registry needs the "
            f"permission {images.OVERRIDE_IMAGE!r}.",
        )


def _names_of_unparsed(raw: object) -> set[str]:
    """The names a request that failed to parse could be known by: its own, or the one it would get."""
    if not isinstance(raw, dict):
        return set()
    names = {raw["name"]} if isinstance(raw.get("name"), str) else set()
    if isinstance(raw.get("target"), str) and isinstance(raw.get("type"), str):
        names.add(naming.default_step_name(raw["target"], raw["type"]))
    return names


def _assign_step_names(steps: list[StepSpec], key: str, errors: _Errors) -> None:
    explicit: dict[str, int] = {}
    for step in steps:
        if step.name:
            if step.name in explicit:
                errors.add(f"{key}[{step.index}].name", f"Duplicate step name {step.name!r} (also used by request {explicit[step.name]}).")
            explicit.setdefault(step.name, step.index)
    taken = set(explicit)
    for step in steps:
        if not step.name:
            base = naming.default_step_name(step.target, step.type)
            candidate, n = base, 2
            while candidate in taken:
                candidate, n = f"{base}-{n}", n + 1
            step.name = candidate
            taken.add(candidate)
