"""Job manifests (DESIGN §7): schema-valid for every target × type, env complete, no secret values."""
from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from jobs.environment import SECRET_ENV
from jobs.manifests import job_manifest
from queues.catalogue import STEP_TYPES, TARGETS

K8S_VERSION = "1.30"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SENTINELS = {
    "KAFKA_USER": "sentinel-kafka-user-5c1d",
    "KAFKA_PASSWORD": "sentinel-kafka-password-8e2a",
    "ARANGO_USER": "sentinel-arango-user-77b0",
    "ARANGO_PASSWORD": "sentinel-arango-password-d94f",
}
REQUIRED_ENV = {
    "QUEUE_ID", "SYMBOL", "TYPE", "KAFKA_TOPIC", "TELEMETRY_PRODUCER_ID", "KAFKA_BOOTSTRAP_SERVERS",
    "QUEUE_CONTROL_TOPIC", "QUEUE_EVENTS_TOPIC", "ARANGO_URL", "ARANGO_DB", "COLLECTION_NAME",
    # aliases existing workers read
    "CONTROL_TOPIC", "TELEMETRY_TOPIC",
}
SECRET_NAMES = {
    "KAFKA_USER", "KAFKA_PASSWORD", "KAFKA_USER_PRODUCER", "KAFKA_PASSWORD_PRODUCER",
    "KAFKA_USER_CONSUMER", "KAFKA_PASSWORD_CONSUMER", "ARANGO_USER", "ARANGO_PASSWORD",
}
FIELDS_BY_TARGET = {
    "graph-builder": {"collection_inputs": ["btc_candles_5m_2024_06"], "collection_output": "btc_graph_x"},
    "gnn-trainer": {"graph_collection": "btc_graph_x", "model_output": "model_x", "inference_interval": "5m"},
    "visualizer": {"source": "btc_graph_x"},
}


def concrete_type(family: str) -> str:
    return family.replace("<interval>", "5m")


def every_combination_payload() -> dict:
    """One request per (target, type) of the catalogue, plus an image override."""
    requests = []
    for target in TARGETS.values():
        for family in target.types:
            type_name = concrete_type(family)
            fields = dict(FIELDS_BY_TARGET.get(target.name, {}))
            if target.name == "gnn-trainer" and type_name != "gnn_train":
                fields.pop("model_output")
            if target.name == "gnn-trainer" and type_name == "gnn_train":
                fields.pop("inference_interval")
            requests.append({"target": target.name, "type": type_name,
                             "name": f"{target.name}-{type_name.replace('_', '-')}", **fields})
    requests.append({"target": "visualizer", "type": "graph_metrics_stream", "name": "custom-image",
                     "source": "btc_graph_x", "image": "example.org/team/visualizer@sha256:" + "a" * 64})
    return {"symbol": "BTCUSDT", "time_range": "2024-06-01:2024-06-30", "requests": requests}


@pytest.fixture
def secret_settings(k8s_settings):
    for key, value in SENTINELS.items():
        setattr(k8s_settings, key, value)
    return k8s_settings


@pytest.fixture(params=["without-ca", "with-ca"])
def ca_setting(request, secret_settings):
    secret_settings.K8S_CA_CONFIGMAP = "streamforge-ca" if request.param == "with-ca" else ""
    return secret_settings.K8S_CA_CONFIGMAP


@pytest.fixture
def override_registry_allowed(settings):
    """The payload's image override comes from a registry allowed besides the platform's own."""
    settings.ALLOWED_IMAGE_REGISTRIES = [settings.K8S_IMAGE_REGISTRY, "example.org/team"]


@pytest.fixture
def all_queues(make_queue, historical_payload, realtime_payload, override_registry_allowed):
    return [make_queue(historical_payload), make_queue(realtime_payload), make_queue(every_combination_payload())]


def env_of(manifest: dict) -> dict[str, dict]:
    return {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_it_renders_a_schema_valid_job_for_every_target_and_type(all_queues, ca_setting):
    manifests = [job_manifest(step) for queue in all_queues for step in queue.steps.all()]
    combos = {(m["metadata"]["labels"]["streamforge.io/target"], m["metadata"]["annotations"]["streamforge.io/type"])
              for m in manifests}
    expected = {(t.name, concrete_type(f)) for t in TARGETS.values() for f in t.types}
    assert expected <= combos
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_it_never_puts_a_secret_value_in_a_manifest(all_queues, ca_setting):
    for queue in all_queues:
        for step in queue.steps.all():
            text = json.dumps(job_manifest(step))
            for value in SENTINELS.values():
                assert value not in text
            env = env_of(job_manifest(step))
            for name in SECRET_NAMES:
                assert "value" not in env[name]
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "streamforge-credentials", "key": SECRET_ENV[name], "optional": True}


def test_it_sets_every_variable_and_alias_workers_read(historical_queue, secret_settings):
    steps = {s.name: s for s in historical_queue.steps.all()}
    for step in steps.values():
        env = env_of(job_manifest(step))
        assert REQUIRED_ENV | SECRET_NAMES <= set(env)
        assert env["QUEUE_ID"]["value"] == historical_queue.queue_id
        assert env["SYMBOL"]["value"] == "BTCUSDT"
        assert env["TIME_RANGE"]["value"] == "2024-06-01:2024-06-30"
        assert env["CONTROL_TOPIC"]["value"] == env["QUEUE_CONTROL_TOPIC"]["value"]
        assert env["TELEMETRY_TOPIC"]["value"] == env["QUEUE_EVENTS_TOPIC"]["value"]
        assert env["TELEMETRY_PRODUCER_ID"]["value"] == step.telemetry_id
        assert "CA_PATH" not in env and "KAFKA_CA_PATH" not in env
    graph = next(s for s in steps.values() if s.target == "graph-builder")
    env = env_of(job_manifest(graph))
    assert env["COLLECTION_INPUTS"]["value"] == "btc_candles_5m_2024_06,btc_trades_2024_06"
    assert env["COLLECTION_OUTPUT"]["value"] == "btc_graph_2024_06"
    trainer = next(s for s in steps.values() if s.target == "gnn-trainer")
    env = env_of(job_manifest(trainer))
    assert env["GRAPH_COLLECTION"]["value"] == "btc_graph_2024_06"
    assert env["MODEL_OUTPUT"]["value"] == "gnn_model_btc_2024_06"
    loader = next(s for s in steps.values() if s.type == "api_candles_5m" and s.target == "loader-producer")
    env = env_of(job_manifest(loader))
    assert env["INTERVAL"]["value"] == "5m"
    assert env["KAFKA_TOPIC"]["value"] == f"{historical_queue.queue_id}-api-candles-5m"
    assert env["COLLECTION_NAME"]["value"] == "btc_candles_5m_2024_06"


def test_it_mounts_the_ca_bundle_from_a_configmap_when_configured(historical_queue, secret_settings):
    secret_settings.K8S_CA_CONFIGMAP = "streamforge-ca"
    manifest = job_manifest(historical_queue.steps.first())
    pod = manifest["spec"]["template"]["spec"]
    assert {"name": "ca-bundle", "configMap": {"name": "streamforge-ca"}} in pod["volumes"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["ca-bundle"]["readOnly"] is True
    env = env_of(manifest)
    assert env["CA_PATH"]["value"] == env["KAFKA_CA_PATH"]["value"] == mounts["ca-bundle"]["mountPath"] + "/ca.crt"


def test_it_sets_a_deadline_only_for_batch_steps(all_queues, secret_settings):
    steps = [s for q in all_queues for s in q.steps.all()]
    assert any(s.streaming for s in steps) and any(not s.streaming for s in steps)
    for step in steps:
        spec = job_manifest(step)["spec"]
        target = TARGETS[step.target]
        assert spec["backoffLimit"] == target.backoff_limit
        assert spec["ttlSecondsAfterFinished"] == target.ttl_seconds_after_finished
        if step.streaming:
            assert "activeDeadlineSeconds" not in spec
        else:
            assert spec["activeDeadlineSeconds"] == target.active_deadline_seconds


def test_it_takes_image_and_resources_from_the_catalogue_unless_the_request_names_an_image(
    make_queue, secret_settings, override_registry_allowed
):
    queue = make_queue(every_combination_payload())
    for step in queue.steps.all():
        container = job_manifest(step)["spec"]["template"]["spec"]["containers"][0]
        target = TARGETS[step.target]
        if step.name == "custom-image":
            assert container["image"] == "example.org/team/visualizer@sha256:" + "a" * 64
        else:
            assert container["image"] == f"registry.example/streamforge/{target.image}:1.2.3"
        assert container["resources"] == {
            "requests": {"cpu": target.resources.cpu_request, "memory": target.resources.memory_request},
            "limits": {"cpu": target.resources.cpu_limit, "memory": target.resources.memory_limit},
        }


def test_it_labels_job_and_pods_and_runs_them_restricted(historical_queue, secret_settings):
    step = historical_queue.steps.get(position=0)
    manifest = job_manifest(step)
    labels = manifest["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/managed-by": "queue-manager-test",
        "streamforge.io/queue-id": historical_queue.queue_id,
        "streamforge.io/step": step.name,
        "streamforge.io/target": "loader-producer",
        "streamforge.io/type": "api-candles-5m",
        "streamforge.io/run": "1",
    }
    assert manifest["metadata"]["name"] == step.job_name
    assert manifest["metadata"]["namespace"] == secret_settings.K8S_NAMESPACE
    assert manifest["metadata"]["annotations"]["streamforge.io/time-range"] == "2024-06-01:2024-06-30"
    template = manifest["spec"]["template"]
    assert template["metadata"]["labels"] == labels
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    security = pod["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_it_previews_manifests_in_the_api_and_admin(client, api, viewer, historical_queue, secret_settings):
    response = api.get(f"/api/queues/{historical_queue.queue_id}/manifests/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [m["metadata"]["name"] for m in body] == list(
        historical_queue.steps.order_by("position").values_list("job_name", flat=True))
    assert all(value not in response.content.decode() for value in SENTINELS.values())

    assert client.get(f"/api/queues/{historical_queue.queue_id}/manifests/").status_code in (401, 403)
    assert api.get("/api/queues/no-such-queue/manifests/").status_code == 404

    viewer.is_staff = True
    viewer.save()
    client.force_login(viewer)
    page = client.get(f"/admin/queues/queue/{historical_queue.queue_id}/manifests/")
    assert page.status_code == 200
    html = page.content.decode()
    first = historical_queue.steps.get(position=0)
    assert first.job_name in html and "secretKeyRef" in html
    documents = list(yaml.safe_load_all(page.context["all_yaml"]))
    assert documents == body
    assert all(value not in html for value in SENTINELS.values())


def test_it_refuses_the_admin_preview_without_view_permission(client, django_user_model, historical_queue):
    staff = django_user_model.objects.create_user(username="staff", password="pw-staff-123!", is_staff=True)
    client.force_login(staff)
    page = client.get(f"/admin/queues/queue/{historical_queue.queue_id}/manifests/")
    assert page.status_code == 403


# --------------------------------------------------------------------------- deploy/


def deploy_documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


@pytest.mark.parametrize("name", ["rbac.yaml", "catalogue-configmap.yaml", "credentials-secret.example.yaml"])
def test_it_ships_deploy_manifests_that_validate(name):
    documents = deploy_documents(name)
    assert documents
    for doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_it_grants_the_queue_manager_exactly_the_rules_it_needs():
    docs = {doc["kind"]: doc for doc in deploy_documents("rbac.yaml")}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in docs["Role"]["rules"]}
    assert rules == {
        # deletecollection: a queue's forced stop removes its stopping steps' Jobs in one call
        (("batch",), ("jobs",)): sorted(["create", "get", "list", "watch", "delete", "deletecollection"]),
        (("",), ("pods",)): sorted(["get", "list", "watch"]),
        (("",), ("pods/log",)): ["get"],
        # the per-step telemetry credential: written and removed, never read back (no get/list)
        (("",), ("secrets",)): sorted(["create", "patch", "delete"]),
    }
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "queue-manager"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "queue-manager"}]
    assert docs["ServiceAccount"]["metadata"]["name"] == "queue-manager"


def test_it_keeps_the_catalogue_configmap_in_sync_with_the_catalogue():
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("render_catalogue_configmap", stdout=out)
    assert out.getvalue() == (DEPLOY / "catalogue-configmap.yaml").read_text()
    data = json.loads(deploy_documents("catalogue-configmap.yaml")[0]["data"]["catalogue.json"])
    assert set(data["targets"]) == set(TARGETS) and set(data["types"]) == set(STEP_TYPES)


def test_it_ships_a_secret_template_with_every_credential_key_and_placeholders_only():
    secret = deploy_documents("credentials-secret.example.yaml")[0]
    assert set(secret["stringData"]) == set(SECRET_ENV.values())
    assert all(value.startswith("CHANGE-ME") for value in secret["stringData"].values())
