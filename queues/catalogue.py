"""The target catalogue: which step types exist, which targets run them, which fields they take.

This is data, not code paths: validation, naming, dependency inference and Job manifests all
read it. Adding a target or a type is an edit here (and, for deployments, in the ConfigMap that
`deploy/` renders from `catalogue_as_dict()`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

# Exchange kline intervals a loader understands.
INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
_INTERVAL_RE = "|".join(re.escape(i) for i in INTERVALS)


@dataclass(frozen=True)
class StepType:
    """A family of step types, e.g. `api_candles_<interval>`."""

    pattern: str  # regex with an optional `interval` group
    streaming: bool
    # Market-data types travel through a Kafka topic from a loader to a connector.
    market_data: bool = False
    needs_time_range: bool = False

    def match(self, name: str) -> re.Match | None:
        return re.fullmatch(self.pattern, name)


STEP_TYPES: dict[str, StepType] = {
    "api_candles_<interval>": StepType(rf"api_candles_(?P<interval>{_INTERVAL_RE})", False, True, True),
    "api_trades": StepType(r"api_trades", False, True, True),
    "ws_candles_<interval>": StepType(rf"ws_candles_(?P<interval>{_INTERVAL_RE})", True, True),
    "ws_trades": StepType(r"ws_trades", True, True),
    "ws_depth": StepType(r"ws_depth", True, True),
    "ws_orderbook": StepType(r"ws_orderbook", True, True),
    "gnn_graph": StepType(r"gnn_graph", False),
    "gnn_train": StepType(r"gnn_train", False),
    "realtime_graph": StepType(r"realtime_graph", True),
    "realtime_gnn_infer": StepType(r"realtime_gnn_infer", True),
    "graph_metrics_stream": StepType(r"graph_metrics_stream", True),
}

MARKET_DATA_TYPES = tuple(name for name, t in STEP_TYPES.items() if t.market_data)

# Per-request fields (DESIGN §3). `name` and `depends_on` are ours and allowed for every target.
ALL_FIELDS = (
    "interval",
    "collection_name",
    "collection_inputs",
    "collection_output",
    "model_output",
    "graph_collection",
    "inference_interval",
    "source",
    "image",
    "kafka_topic",
)
COMMON_FIELDS = ("target", "type", "name", "depends_on", "image")
LIST_FIELDS = ("collection_inputs", "depends_on")


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "100m"
    memory_request: str = "256Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"


@dataclass(frozen=True)
class Target:
    """A StreamForge service that runs as a Kubernetes Job."""

    name: str
    types: tuple[str, ...]  # keys of STEP_TYPES
    optional: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    # Extra required fields for particular types.
    required_by_type: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Role in data flow: "producer" writes the type's topic, "consumer" reads it into a collection.
    topic_role: str | None = None
    # Which fields name data collections this target reads and writes (dependency rule 2, lineage).
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    image: str = ""
    resources: Resources = Resources()
    backoff_limit: int = 2
    active_deadline_seconds: int = 6 * 3600  # batch steps only
    ttl_seconds_after_finished: int = 3600

    @property
    def allowed_fields(self) -> frozenset[str]:
        return frozenset(COMMON_FIELDS) | frozenset(self.optional) | frozenset(self.required) | {
            f for fields in self.required_by_type.values() for f in fields
        }

    def type_family(self, type_name: str) -> str | None:
        """The STEP_TYPES key this target runs `type_name` under, or None if it does not take it."""
        for family in self.types:
            if STEP_TYPES[family].match(type_name):
                return family
        return None

    def required_for(self, family: str) -> tuple[str, ...]:
        return self.required + self.required_by_type.get(family, ())


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="loader-producer",
            types=MARKET_DATA_TYPES,
            optional=("interval", "collection_name", "kafka_topic"),
            topic_role="producer",
            image="loader-producer",
        ),
        Target(
            name="arango-connector",
            types=MARKET_DATA_TYPES,
            optional=("interval", "collection_name", "kafka_topic"),
            topic_role="consumer",
            writes=("collection_name",),
            image="arango-connector",
        ),
        Target(
            name="graph-builder",
            types=("gnn_graph", "realtime_graph"),
            required=("collection_inputs", "collection_output"),
            optional=("interval",),
            reads=("collection_inputs",),
            writes=("collection_output",),
            image="graph-builder",
            resources=Resources(memory_request="1Gi", memory_limit="4Gi"),
        ),
        Target(
            name="gnn-trainer",
            types=("gnn_train", "realtime_gnn_infer"),
            required=("graph_collection",),
            optional=("model_output", "inference_interval"),
            required_by_type={"gnn_train": ("model_output",)},
            reads=("graph_collection",),
            writes=("model_output",),
            image="gnn-trainer",
            resources=Resources(cpu_request="500m", memory_request="2Gi", cpu_limit="2", memory_limit="8Gi"),
            active_deadline_seconds=12 * 3600,
        ),
        Target(
            name="visualizer",
            types=("graph_metrics_stream",),
            required=("source",),
            optional=("interval",),
            reads=("source",),
            image="visualizer",
        ),
    )
}


@lru_cache(maxsize=512)
def type_family(type_name: str) -> str | None:
    """The STEP_TYPES key that `type_name` belongs to, whatever the target."""
    for family, step_type in STEP_TYPES.items():
        if step_type.match(type_name):
            return family
    return None


def type_interval(type_name: str) -> str | None:
    """The interval a type names (`api_candles_5m` → `5m`), or None for types without one."""
    family = type_family(type_name)
    if family is None:
        return None
    match = STEP_TYPES[family].match(type_name)
    return match.groupdict().get("interval") if match else None


def is_streaming(type_name: str) -> bool:
    family = type_family(type_name)
    return bool(family and STEP_TYPES[family].streaming)


def catalogue_as_dict() -> dict:
    """A JSON-friendly view of the catalogue (API, admin help and the deploy ConfigMap)."""
    return {
        "types": {
            name: {"pattern": t.pattern, "streaming": t.streaming, "market_data": t.market_data}
            for name, t in STEP_TYPES.items()
        },
        "targets": {
            name: {
                "types": list(t.types),
                "required": list(t.required),
                "required_by_type": {k: list(v) for k, v in t.required_by_type.items()},
                "optional": sorted(set(t.optional) | {"image", "name", "depends_on"}),
                "image": t.image,
                "resources": t.resources.__dict__,
                "backoff_limit": t.backoff_limit,
                "active_deadline_seconds": t.active_deadline_seconds,
                "ttl_seconds_after_finished": t.ttl_seconds_after_finished,
            }
            for name, t in TARGETS.items()
        },
        "intervals": list(INTERVALS),
    }
