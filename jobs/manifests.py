"""The Kubernetes Job a step runs as (DESIGN §7), rendered as a plain dict.

One function, `job_manifest(step)`, is the only place a Job is described: the launcher creates
exactly this, the API and the admin "dry run" show exactly this. Credentials are referenced from
a Secret by key, never written as values, so a manifest can be shown and logged safely.
"""
from __future__ import annotations

import re

from django.conf import settings

from jobs.credentials import SECRET_KEY_NAME, TOKEN_ENV, secret_name
from jobs.environment import CA_MOUNT_DIR, SECRET_ENV, ca_path, step_environment
from queues.catalogue import TARGETS
from queues.models import QueueRequest

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_QUEUE = "streamforge.io/queue-id"
LABEL_STEP = "streamforge.io/step"
LABEL_TARGET = "streamforge.io/target"
LABEL_TYPE = "streamforge.io/type"
LABEL_RUN = "streamforge.io/run"  # 1, then +1 per retry (each run has its own Job name)
# Set by the Job controller on every pod it creates (the second one since Kubernetes 1.27).
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")

CA_VOLUME = "ca-bundle"
TMP_VOLUME = "tmp"

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(value: str) -> str:
    """A valid label value: at most 63 chars of [A-Za-z0-9._-], starting and ending alphanumeric."""
    cleaned = _LABEL_VALUE_BAD.sub("-", value.replace("_", "-"))[:63]
    return cleaned.strip("-._")


def manager_selector() -> str:
    """Label selector for every Job and Pod this Queue Manager created."""
    return f"{LABEL_MANAGED_BY}={label_value(settings.K8S_MANAGER_ID)}"


def step_labels(step: QueueRequest) -> dict[str, str]:
    """Labels that identify the step's Job and pods (and prove a Job is ours)."""
    return {
        LABEL_MANAGED_BY: label_value(settings.K8S_MANAGER_ID),
        LABEL_QUEUE: label_value(step.queue.queue_id),
        LABEL_STEP: label_value(step.name),
        LABEL_TARGET: label_value(step.target),
        LABEL_TYPE: label_value(step.type),
        LABEL_RUN: str(getattr(step, "run", 1)),
    }


def step_selector(step: QueueRequest) -> str:
    """Every run's Jobs and pods of the step (a force stop leaves none of them behind)."""
    labels = step_labels(step)
    return ",".join(f"{key}={labels[key]}" for key in (LABEL_MANAGED_BY, LABEL_QUEUE, LABEL_STEP))


def step_image(step: QueueRequest) -> str:
    """The request's own image if it names one, else the catalogue's image for the target."""
    if step.image:
        return step.image
    return f"{settings.K8S_IMAGE_REGISTRY.rstrip('/')}/{TARGETS[step.target].image}:{settings.K8S_IMAGE_TAG}"


def _env(step: QueueRequest) -> list[dict]:
    env = [{"name": name, "value": value} for name, value in step_environment(step).items()]
    if settings.K8S_CA_CONFIGMAP:
        env += [{"name": "CA_PATH", "value": ca_path()}, {"name": "KAFKA_CA_PATH", "value": ca_path()}]
    # Optional: a Secret without (say) Kafka credentials is valid for a cluster without SASL.
    env += [
        {
            "name": name,
            "valueFrom": {
                "secretKeyRef": {"name": settings.K8S_CREDENTIALS_SECRET, "key": key, "optional": True}
            },
        }
        for name, key in SECRET_ENV.items()
    ]
    # The step run's own telemetry credential, from the Secret the launcher creates beside its Job.
    env.append(
        {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret_name(step.job_name), "key": SECRET_KEY_NAME}}}
    )
    return env


def _volumes(step: QueueRequest) -> tuple[list[dict], list[dict]]:
    # The root filesystem is read-only; workers still need a scratch /tmp.
    volumes = [{"name": TMP_VOLUME, "emptyDir": {}}]
    mounts = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if settings.K8S_CA_CONFIGMAP:
        volumes.append({"name": CA_VOLUME, "configMap": {"name": settings.K8S_CA_CONFIGMAP}})
        mounts.append({"name": CA_VOLUME, "mountPath": CA_MOUNT_DIR, "readOnly": True})
    return volumes, mounts


def _annotations(step: QueueRequest) -> dict[str, str]:
    queue = step.queue
    annotations = {
        "streamforge.io/queue-id": queue.queue_id,
        "streamforge.io/step-name": step.name,
        "streamforge.io/step-number": str(step.number),
        "streamforge.io/type": step.type,
        "streamforge.io/symbol": queue.symbol,
        "streamforge.io/telemetry-id": step.telemetry_id,
        "streamforge.io/streaming": "true" if step.streaming else "false",
    }
    if queue.time_range:
        annotations["streamforge.io/time-range"] = queue.time_range
    return annotations


def job_manifest(step: QueueRequest) -> dict:
    """The batch/v1 Job for `step`, as sent to the API server."""
    target = TARGETS[step.target]
    labels = step_labels(step)
    volumes, mounts = _volumes(step)
    resources = target.resources
    container = {
        "name": step.target,
        "image": step_image(step),
        "env": _env(step),
        "resources": {
            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": mounts,
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    spec = {
        "backoffLimit": target.backoff_limit,
        "ttlSecondsAfterFinished": target.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": dict(labels), "annotations": _annotations(step)}, "spec": pod_spec},
    }
    if not step.streaming:
        # A streaming step runs until stopped; a deadline would kill it.
        spec["activeDeadlineSeconds"] = target.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": step.job_name,
            "namespace": settings.K8S_NAMESPACE,
            "labels": labels,
            "annotations": _annotations(step),
        },
        "spec": spec,
    }


def queue_manifests(queue) -> list[dict]:
    """Every step's Job, in step order (previews)."""
    return [job_manifest(step) for step in queue.steps.select_related("queue").order_by("position")]
