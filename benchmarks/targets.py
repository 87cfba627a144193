"""The one place benchmarks import product code from.

The hot paths are being moved between packages (services to jobs/, API to api/, admin to console/,
Kafka consumers to consumers/); every figure reaches the product through the names below, so such a
move changes this file only. Imports are lazy: Django must be set up first.
"""
from __future__ import annotations


def models():
    from queues import models

    return models


def queue_create(**kwargs):
    from jobs.submission import queue_create

    return queue_create(**kwargs)


def queue_stop(**kwargs):
    from jobs.services import queue_stop

    return queue_stop(**kwargs)


def template_payload(name: str) -> dict:
    from queues.pipeline_templates import template_payload

    return template_payload(name)


def job_name(queue_id: str, target: str, step_number: int) -> str:
    from queues.naming import job_name

    return job_name(queue_id, target, step_number)


def scheduler():
    """queue_advance, reconcile (the Celery tasks' bodies)."""
    from jobs import scheduler

    return scheduler


def kubernetes_launcher(api_client, namespace: str):
    from jobs.launchers.kubernetes import KubernetesLauncher

    return KubernetesLauncher(api_client, namespace=namespace)


def reset_launcher_cache() -> None:
    """get_launcher() caches the launcher built from settings; settings change between figures."""
    from jobs.launchers import _build

    _build.cache_clear()


def job_objects(step) -> tuple[dict, dict]:
    """What the launcher creates for one step, in its order: the Job's manifest, then the Secret owned
    by it (its ownerReferences uid is the created Job's, filled in from the API's answer)."""
    from jobs.launchers.kubernetes import credential_secret
    from jobs.manifests import job_manifest

    return job_manifest(step), credential_secret(step, {"metadata": {"name": step.job_name, "uid": ""}}, namespace="")


def launcher_api_client(plain):
    """The API client class the launcher is built with (k8s_client), on `plain`'s configuration: a bare
    baseline pays exactly the client work the product pays, no more."""
    from jobs.k8s_client import ApiClient

    return ApiClient(plain.configuration)


def prepared_body(body: dict) -> dict:
    """A body the launcher's client sends as built (k8s_client.PreparedBody), as the launcher sends its own."""
    from jobs.k8s_client import PreparedBody

    return PreparedBody(body)


def job_manifest(step) -> dict:
    from jobs.manifests import job_manifest

    return job_manifest(step)


def celery_app():
    from queuemanager.celery import app

    return app


def kafka_ensure_topics(topics: list[str]) -> None:
    from kafkabus.consumer import ensure_topics

    ensure_topics(topics)


def kafka_producer():
    from kafkabus.publisher import get_producer

    return get_producer()


def kafka_consumer_config(group: str) -> dict:
    from kafkabus.config import consumer_config

    return consumer_config(group)


def events_consumer_run(**kwargs):
    """The loop of `manage.py consume_queue_events`."""
    from consumers import events

    return events.run(**kwargs)


def mirror_drain(**kwargs):
    from mirror.sync import mirror_drain

    return mirror_drain(**kwargs)


def mirror_record_many(kind: str, ids: list[int]) -> None:
    from mirror.outbox import record_many

    record_many(kind, ids)


def mirror_outbox_table() -> str:
    from mirror.models import MirrorOutbox

    return MirrorOutbox._meta.db_table


def mirror_forget_schema() -> None:
    from mirror.arango import forget_schema

    forget_schema()


API_QUEUE_LIST = "/api/queues/"
ADMIN_QUEUE_LIST = "/admin/queues/queue/"


def admin_queue_page(pk: int) -> str:
    return f"/admin/queues/queue/{pk}/change/"
