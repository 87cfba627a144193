"""The environment of a step's workload (DESIGN §7), shared by every launcher.

Plain values and secret references are kept apart: the Kubernetes launcher turns secrets into
`secretKeyRef`s, the local launcher reads them from settings as the Secret would hold them.
"""
from __future__ import annotations

from django.conf import settings

from queues.models import QueueRequest

CA_MOUNT_DIR = "/etc/streamforge/ca"
CA_FILE_NAME = "ca.crt"

# env var → key in the credentials Secret (and the setting holding the value locally).
SECRET_ENV: dict[str, str] = {
    "KAFKA_USER": "KAFKA_USER",
    "KAFKA_PASSWORD": "KAFKA_PASSWORD",
    # Aliases existing workers read.
    "KAFKA_USER_PRODUCER": "KAFKA_USER",
    "KAFKA_PASSWORD_PRODUCER": "KAFKA_PASSWORD",
    "KAFKA_USER_CONSUMER": "KAFKA_USER",
    "KAFKA_PASSWORD_CONSUMER": "KAFKA_PASSWORD",
    "ARANGO_USER": "ARANGO_USER",
    "ARANGO_PASSWORD": "ARANGO_PASSWORD",
}


def primary_collection(step: QueueRequest) -> str:
    return step.collection_name or step.collection_output or step.graph_collection or step.source or ""


def step_environment(step: QueueRequest) -> dict[str, str]:
    """Plain (non-secret) variables, in a stable order."""
    queue = step.queue
    env = {
        "QUEUE_ID": queue.queue_id,
        "SYMBOL": queue.symbol,
        "TYPE": step.type,
        "TARGET": step.target,
        "STEP_NAME": step.name,
        "KAFKA_TOPIC": step.kafka_topic,
        "TELEMETRY_PRODUCER_ID": step.telemetry_id,
        "STEP_RUN": str(step.run),  # sent back as `run` in telemetry, so a retry's events are its own
        "KAFKA_BOOTSTRAP_SERVERS": settings.KAFKA_BOOTSTRAP_SERVERS,
        "QUEUE_CONTROL_TOPIC": settings.QUEUE_CONTROL_TOPIC,
        "QUEUE_EVENTS_TOPIC": settings.QUEUE_EVENTS_TOPIC,
        "CONTROL_TOPIC": settings.QUEUE_CONTROL_TOPIC,
        "TELEMETRY_TOPIC": settings.QUEUE_EVENTS_TOPIC,
        "ARANGO_URL": settings.ARANGO_URL,
        "ARANGO_DB": settings.ARANGO_DB,
        "COLLECTION_NAME": primary_collection(step),
    }
    optional = {
        "TIME_RANGE": queue.time_range or "",
        "INTERVAL": step.interval,
        "COLLECTION_INPUTS": ",".join(step.collection_inputs),
        "COLLECTION_OUTPUT": step.collection_output,
        "MODEL_OUTPUT": step.model_output,
        "GRAPH_COLLECTION": step.graph_collection,
        "INFERENCE_INTERVAL": step.inference_interval,
        "SOURCE": step.source,
    }
    env.update({key: value for key, value in optional.items() if value})
    return env


def ca_path() -> str:
    """Where the CA bundle is inside a Job (a ConfigMap volume) when one is configured."""
    return f"{CA_MOUNT_DIR}/{CA_FILE_NAME}" if settings.K8S_CA_CONFIGMAP or settings.CA_PATH else ""


def secret_values() -> dict[str, str]:
    """Secret variables with their values, for launchers that run steps as local processes."""
    return {env: getattr(settings, key, "") for env, key in SECRET_ENV.items() if getattr(settings, key, "")}
