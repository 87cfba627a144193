"""Per-step telemetry credentials (issue #10 §5 "Telemetry spoofing" and "credentials written 0600").

A step run reports over HTTP with a credential that names it (queue_id, telemetry_id, run); the
endpoint takes its events only for that step and run. Launchers hand the credential over out of
band: a per-Job Kubernetes Secret (secretKeyRef), or a 0600 file for local processes.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import stat
import sys
import textwrap
import time

import pytest
from django.core import signing
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from queues.models import QueueRequest, StepState, TelemetryEvent
from tests.jobs.helpers import put, step_of
from tests.queues.factories import UserFactory
from tests.queues.factories import make_queue as make_api_queue

LOADER = ("loader-producer", "api_candles_5m")
CONNECTOR = ("arango-connector", "api_candles_5m")
SHARED = "shared-telemetry-token-for-these-tests"


def _credential(step) -> str:
    from jobs.credentials import step_credential_issue

    return step_credential_issue(step=step)


def _client(bearer: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bearer}")
    return client


def _event(step, status="loading", **fields) -> dict:
    return {"event": status, "queue_id": step.queue.queue_id, "producer": step.telemetry_id, **fields}


@pytest.fixture
def queue(db, settings):
    settings.TELEMETRY_TOKEN = SHARED
    return make_api_queue(queue_id="cred-q")


# --- HTTP: who may report what ----------------------------------------------------------------


@pytest.mark.django_db
def test_it_accepts_a_step_credential_for_its_own_step(queue):
    """Case: each step run gets its own credential, and it works for that step."""
    step = put(step_of(queue, LOADER), StepState.PENDING)
    response = _client(_credential(step)).post("/api/telemetry/", _event(step, "started"), format="json")
    assert response.status_code == 202, response.content
    step.refresh_from_db()
    assert step.state == StepState.RUNNING


@pytest.mark.django_db
def test_it_refuses_a_step_credential_for_another_step(queue):
    """Case: spoofing — the loader's credential cannot mark the connector succeeded."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    connector = put(step_of(queue, CONNECTOR), StepState.RUNNING)
    response = _client(_credential(loader)).post("/api/telemetry/", _event(connector, "finished"), format="json")
    assert response.status_code == 403
    assert response.json()["foreign_events"] == [0]
    connector.refresh_from_db()
    assert connector.state == StepState.RUNNING
    assert not TelemetryEvent.objects.exists()


@pytest.mark.django_db
def test_it_refuses_a_whole_batch_with_one_foreign_event_naming_its_index(queue):
    """Case: every event of a batch must name the credential's step, else 403 naming the index."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    connector = step_of(queue, CONNECTOR)
    batch = [
        _event(loader, records_written=1),
        {"event": "loading", "queue_id": "cred-q", "telemetry_id": connector.telemetry_id},
        _event(loader, records_written=2, producer=loader.telemetry_id, telemetry_id=connector.telemetry_id),
        {**_event(loader), "queue_id": "another-queue"},
        "not an event",
    ]
    response = _client(_credential(loader)).post("/api/telemetry/", batch, format="json")
    assert response.status_code == 403
    assert response.json()["foreign_events"] == [1, 2, 3, 4]
    assert not TelemetryEvent.objects.exists()


@pytest.mark.django_db
def test_it_refuses_the_credential_of_an_earlier_run(queue):
    """Case: a credential names the run — the old run of a retried step cannot report for the new one."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    old = _credential(step)
    step = put(step, StepState.RUNNING, run=2)
    assert _client(old).post("/api/telemetry/", _event(step, "finished"), format="json").status_code == 403
    assert _client(_credential(step)).post("/api/telemetry/", _event(step), format="json").status_code == 202


@pytest.mark.django_db
def test_it_refuses_an_event_that_names_another_run(queue):
    """Case: an event carrying `run` must carry the credential's run."""
    step = put(step_of(queue, LOADER), StepState.RUNNING, run=2)
    response = _client(_credential(step)).post("/api/telemetry/", _event(step, run=1), format="json")
    assert response.status_code == 403 and response.json()["foreign_events"] == [0]
    assert _client(_credential(step)).post("/api/telemetry/", _event(step, run=2), format="json").status_code == 202


@pytest.mark.django_db
def test_it_refuses_forged_credentials(queue, settings):
    """Case: only the server secret makes credentials — tampered, unsalted or other-key ones are 401."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    real = _credential(step)
    payload, signature = real.rsplit(":", 1)
    forged = [
        # Same signature, another step named in the payload.
        signing.Signer().sign_object(["cred-q", step_of(queue, CONNECTOR).telemetry_id, 1]).rsplit(":", 1)[0]
        + ":" + signature,
        # Signed with SECRET_KEY but without the credential salt (e.g. a value from another feature).
        signing.Signer(algorithm="sha256").sign_object(["cred-q", step.telemetry_id, 1]),
        signing.Signer(key="another-key", salt="streamforge.jobs.step-telemetry-credential",
                       algorithm="sha256").sign_object(["cred-q", step.telemetry_id, 1]),
        payload + ":" + signature[:-2] + ("AA" if not signature.endswith("AA") else "BB"),
        "", "garbage", "a:b:c",
    ]
    for token in forged:
        assert _client(token).post("/api/telemetry/", _event(step), format="json").status_code == 401, token
    assert not TelemetryEvent.objects.exists()


@pytest.mark.django_db
def test_it_signs_with_the_telemetry_signing_key_when_set(queue, settings):
    """Case: TELEMETRY_SIGNING_KEY replaces the key derived from SECRET_KEY."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    derived = _credential(step)
    settings.TELEMETRY_SIGNING_KEY = "a-dedicated-telemetry-signing-key"
    own = _credential(step)
    assert own != derived
    assert _client(derived).post("/api/telemetry/", _event(step), format="json").status_code == 401
    assert _client(own).post("/api/telemetry/", _event(step), format="json").status_code == 202


@pytest.mark.django_db
def test_it_refuses_the_shared_token_by_default(queue):
    """Case: the shared TELEMETRY_TOKEN let any holder report for any step; it is off by default."""
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    response = _client(SHARED).post("/api/telemetry/", _event(step, "finished"), format="json")
    assert response.status_code == 401
    step.refresh_from_db()
    assert step.state == StepState.RUNNING


@pytest.mark.django_db
def test_it_accepts_the_shared_token_only_when_switched_on(queue, settings):
    """Case: TELEMETRY_SHARED_TOKEN_ALLOWED keeps legacy workers reporting (any step) until migrated."""
    settings.TELEMETRY_SHARED_TOKEN_ALLOWED = True
    step = put(step_of(queue, LOADER), StepState.RUNNING)
    assert _client(SHARED).post("/api/telemetry/", _event(step), format="json").status_code == 202
    settings.TELEMETRY_TOKEN = ""  # switched on but no token configured: nothing matches
    assert _client("").post("/api/telemetry/", _event(step), format="json").status_code == 401


@pytest.mark.django_db
def test_it_lets_users_with_the_telemetry_permission_report_for_any_step(queue):
    """Case: staff users with queues.add_telemetryevent can still post for any step."""
    loader = put(step_of(queue, LOADER), StepState.RUNNING)
    connector = put(step_of(queue, CONNECTOR), StepState.RUNNING)
    reporter = UserFactory(username="reporter", is_staff=True, perms=["add_telemetryevent"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=reporter).key}")
    response = client.post("/api/telemetry/", [_event(loader), _event(connector)], format="json")
    assert response.status_code == 202 and response.json()["accepted"] == 2


@pytest.mark.django_db
def test_it_gives_a_step_credential_nothing_but_telemetry(queue):
    """Case: a step's credential is not an API login."""
    client = _client(_credential(step_of(queue, LOADER)))
    assert client.get("/api/queues/").status_code in (401, 403)
    assert client.post("/api/queues/cred-q/stop/").status_code in (401, 403)


# --- Kubernetes: a Secret per Job, referenced, never a literal -----------------------------------


def _secrets(kube, step=None) -> list[dict]:
    import kubernetes

    raw = kubernetes.client.CoreV1Api(kube.api_client).list_namespaced_secret(
        kube.namespace, label_selector="app.kubernetes.io/managed-by=queue-manager-test", _preload_content=False)
    items = json.loads(raw.data)["items"]
    return [s for s in items if step is None or s["metadata"]["name"] == f"{step.job_name}-telemetry"]


def test_the_job_manifest_references_the_credential_secret(historical_queue, k8s_settings):
    """Case: the credential reaches a Job as a secretKeyRef to its own Secret, never as a value."""
    step = historical_queue.steps.select_related("queue").first()
    from jobs.manifests import job_manifest

    manifest = job_manifest(step)
    env = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MANAGER_TELEMETRY_TOKEN"] == {
        "name": "MANAGER_TELEMETRY_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{step.job_name}-telemetry", "key": "token"}},
    }
    assert _credential(step) not in json.dumps(manifest)


def test_it_creates_the_credential_secret_owned_by_the_job(launcher, historical_queue, kube):
    """Case: the launcher creates a per-step Secret with the token, owner-referenced to its Job from
    creation (issue #12: the Job first, so the Secret's create names its uid; no patch)."""
    step = historical_queue.steps.select_related("queue").first()
    handle = launcher.launch(step)
    [secret] = _secrets(kube, step)
    assert base64.b64decode(secret["data"]["token"]).decode() == _credential(step)
    assert secret["metadata"]["labels"]["streamforge.io/queue-id"] == historical_queue.queue_id
    owners = secret["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("Job", step.job_name, handle["uid"])]
    if kube.emulator is not None:
        posts = [path for method, path, *_ in kube.emulator.requests if method == "POST"]
        assert posts == [f"/apis/batch/v1/namespaces/{kube.namespace}/jobs", f"/api/v1/namespaces/{kube.namespace}/secrets"]
    assert launcher.launch(step)["uid"] == handle["uid"]  # idempotent: the Secret's 409 is fine
    assert len(_secrets(kube, step)) == 1


def test_it_deletes_the_credential_secret_with_the_job(launcher, historical_queue, kube):
    """Case: a stopped step leaves no Secret behind (force stop deletes Job and Secret)."""
    step = historical_queue.steps.select_related("queue").first()
    launcher.launch(step)
    launcher.stop(step, force=True)
    assert _secrets(kube, step) == []


def test_the_emulated_garbage_collector_removes_owned_secrets(launcher, historical_queue, kube, emulator):
    """Case: a Job deleted elsewhere (TTL controller, kubectl) takes its owned Secret along."""
    step = historical_queue.steps.select_related("queue").first()
    launcher.launch(step)
    emulator.store.delete("jobs", kube.namespace, step.job_name, "Background")
    deadline = time.monotonic() + 10  # the emulated collector acts a moment later, as a real one does
    while _secrets(kube, step) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _secrets(kube, step) == []


def test_the_emulator_treats_secrets_as_the_api_server_does(kube, emulator):
    """Case: the emulator's Secrets are strict — base64 `data`, write-only `stringData`."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    core = kubernetes.client.CoreV1Api(kube.api_client)
    bad = {"metadata": {"name": "bad"}, "data": {"token": "not base64!"}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_secret(kube.namespace, bad)
    assert refused.value.status == 422
    core.create_namespaced_secret(kube.namespace, {"metadata": {"name": "good"}, "stringData": {"token": "t0k"}})
    stored = json.loads(core.read_namespaced_secret("good", kube.namespace, _preload_content=False).data)
    assert stored["data"] == {"token": base64.b64encode(b"t0k").decode()} and "stringData" not in stored
    assert stored["type"] == "Opaque"


def test_the_role_grants_writing_secrets_but_never_reading_them():
    """Case: deploy/rbac.yaml lets the manager create, own and delete credential Secrets, not read any."""
    from pathlib import Path

    import yaml

    rbac = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
    [role] = [doc for doc in yaml.safe_load_all(rbac.read_text()) if doc and doc["kind"] == "Role"]
    verbs = {verb for rule in role["rules"] if "secrets" in rule["resources"] for verb in rule["verbs"]}
    assert verbs == {"create", "patch", "delete"}


# --- Local processes: a 0600 file, never the environment ----------------------------------------

PROBE = textwrap.dedent(
    """
    import json, os
    path = os.environ.get("MANAGER_TELEMETRY_TOKEN_FILE", "")
    token = open(path).read() if path else None
    print(json.dumps({"env_token": os.environ.get("MANAGER_TELEMETRY_TOKEN"), "file": path, "token": token}))
    """
)


def _wait_for_exit(launcher, step) -> None:
    from jobs.launchers.base import Phase

    deadline = time.monotonic() + 30
    while launcher.status(step).phase == Phase.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.django_db
def test_the_local_launcher_hands_over_the_credential_in_a_0600_file(queue, tmp_path, monkeypatch):
    """Case: step credentials are written to files with mode 0600 from the moment they are created,
    and the literal is not in the process environment."""
    from jobs.launchers.local import LocalLauncher

    step = step_of(queue, LOADER)
    modes_before_chmod = []
    real_chmod = os.chmod

    def spying_chmod(path, mode, *args, **kwargs):  # a later chmod would leave a window open
        modes_before_chmod.append((str(path), stat.S_IMODE(os.stat(path).st_mode)))
        return real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", spying_chmod)
    old_umask = os.umask(0o022)
    try:
        launcher = LocalLauncher(tmp_path, [sys.executable, "-c", PROBE])
        launcher.launch(step)
    finally:
        os.umask(old_umask)
    _wait_for_exit(launcher, step)
    seen = json.loads(launcher.logs(step, tail_bytes=10_000).strip().splitlines()[-1])
    assert seen["env_token"] is None
    assert seen["token"] == _credential(step)
    assert [(p, m) for p, m in modes_before_chmod if m & 0o077] == []
    directory = launcher.state_dir(step)
    for name in ("env.json", "telemetry.token"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert _credential(step) not in (directory / "env.json").read_text()


@pytest.mark.django_db
def test_the_simulator_reads_the_credential_file(tmp_path):
    """Case: the simulator sends the credential it was handed in the file."""
    from devtools.simulator.worker import build_io

    path = tmp_path / "telemetry.token"
    path.write_text("the-credential\n")
    sink, _ = build_io({"MANAGER_TELEMETRY_URL": "http://127.0.0.1:9/api/telemetry/",
                        "MANAGER_TELEMETRY_TOKEN_FILE": str(path)})
    assert sink.token == "the-credential"


@pytest.mark.django_db(transaction=True)
def test_a_simulated_step_reports_with_its_own_credential(live_server, tmp_path, settings, monkeypatch):
    """Case: end to end — a local step reports over HTTP with its file credential and is accepted."""
    from jobs.launchers.local import LocalLauncher

    settings.MANAGER_BASE_URL = live_server.url
    settings.KAFKA_BOOTSTRAP_SERVERS = ""  # HTTP telemetry, the path the credential guards
    monkeypatch.setenv("SIMULATOR_TICK", "0.01")
    monkeypatch.setenv("SIMULATOR_TICKS", "2")
    queue = make_api_queue(queue_id="cred-live")
    step = put(step_of(queue, LOADER), StepState.PENDING)
    launcher = LocalLauncher(tmp_path, [sys.executable, "-m", "devtools.simulator"])
    launcher.launch(step)
    _wait_for_exit(launcher, step)
    output = launcher.logs(step, tail_bytes=100_000)
    assert "rejected" not in output, output
    step.refresh_from_db()
    assert step.state == StepState.SUCCEEDED, output
    assert TelemetryEvent.objects.filter(step=step, status="finished").exists()


# --- Never shown: logs, API, admin, previews ----------------------------------------------------


def test_the_credential_never_appears_in_logs_api_or_admin(launcher, historical_queue, kube, caplog, client,
                                                           staff_operator, api):
    """Case: the credential is not in logs, API responses, admin pages or the manifest preview."""
    step = historical_queue.steps.select_related("queue").first()
    token = _credential(step)
    with caplog.at_level(logging.DEBUG):
        launcher.launch(step)
        launcher.stop(step, force=True)
    for record in caplog.records:
        assert token not in record.getMessage() and token not in repr(vars(record))
    client.force_login(staff_operator)
    queue_id = historical_queue.queue_id
    pages = [
        api.get(f"/api/queues/{queue_id}/"),
        api.get(f"/api/queues/{queue_id}/manifests/"),
        client.get(f"/admin/queues/queue/{queue_id}/manifests/"),
        client.get(f"/admin/queues/queue/{historical_queue.pk}/change/"),
    ]
    for page in pages:
        assert page.status_code == 200, page
        assert token.encode() not in page.content
    assert QueueRequest.objects.filter(pk=step.pk).exists()
