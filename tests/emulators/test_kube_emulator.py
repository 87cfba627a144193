"""Kubernetes contract suite: the emulator and, opt-in, a real cluster must pass the same assertions.

Run against a real cluster (kind, k3d) by setting K8S_CONTRACT_KUBECONFIG (README, "Running steps as
Kubernetes Jobs › Tests"); otherwise the `real` cases skip with one line. Calls run as the deploy service
account of deploy/rbac.yaml in a namespace of their own. Tests that play the Job controller or inject
faults take `cluster`/`ctl` and skip on a real cluster.
"""
import json
import threading

import kubernetes
import kubernetes_validate
import pytest
from kubernetes.client import ApiException, BatchV1Api, CoreV1Api

from tests.helpers import wait_until

from .kube import JobController, KubeCluster, parse_label_selector
from .kube_contract import TARGETS, kube_target, play, worker_job


def job_manifest(name, labels=None, command=("python", "-m", "worker")):
    labels = {"app.kubernetes.io/managed-by": "streamforge-queue-manager", **(labels or {})}
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "worker",
                        "image": "streamforge/worker:1.0",
                        "command": list(command),
                        "env": [{"name": "QUEUE_ID", "value": "q1"},
                                # optional, as the product's are: a missing Secret would hold the pod
                                {"name": "KAFKA_PASSWORD", "valueFrom": {
                                    "secretKeyRef": {"name": "kafka", "key": "password", "optional": True}}}],
                    }],
                },
            },
        },
    }
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    return manifest


@pytest.fixture(params=TARGETS)
def target(request):
    with kube_target(request.param) as t:
        yield t


@pytest.fixture
def ns(target):
    return target.namespace


@pytest.fixture
def cluster(target):
    if target.emulator is None:
        pytest.skip("emulator only: injects faults or inspects what a real cluster cannot")
    return target.emulator


@pytest.fixture
def batch(target):
    return BatchV1Api(target.api_client)


@pytest.fixture
def core(target):
    return CoreV1Api(target.api_client)


@pytest.fixture
def ctl(cluster, ns):
    return JobController(cluster, ns)


def test_create_get_and_defaults(batch, ns):
    created = batch.create_namespaced_job(ns, job_manifest("etl-1", {"queue-id": "q1"}))
    assert isinstance(created, kubernetes.client.V1Job)
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    assert created.spec.template.metadata.labels["job-name"] == "etl-1"
    assert created.spec.template.metadata.labels["batch.kubernetes.io/controller-uid"] == created.metadata.uid
    assert created.spec.backoff_limit == 2 and created.spec.completions == 1
    fetched = batch.read_namespaced_job("etl-1", ns)
    assert fetched.metadata.uid == created.metadata.uid
    assert fetched.spec.template.spec.containers[0].env[1].value_from.secret_key_ref.name == "kafka"


def test_duplicate_is_409_already_exists(batch, ns):
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(ns, job_manifest("etl-1"))
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["kind"] == "Status" and status["reason"] == "AlreadyExists" and status["code"] == 409
    assert status["message"] == 'jobs.batch "etl-1" already exists' and status["details"]["name"] == "etl-1"


def test_missing_is_404_and_invalid_is_422(batch, ns):
    with pytest.raises(ApiException) as err:
        batch.read_namespaced_job("nope", ns)
    assert err.value.status == 404
    bad = job_manifest("etl-1", {"target": "too/many/slashes"})
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(ns, bad)
    assert err.value.status == 422 and "Invalid" in err.value.body
    always = job_manifest("etl-2")
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(ns, always)
    assert err.value.status == 422


@pytest.mark.parametrize("selector, expected", [
    ("queue-id=q1", {"a", "b"}),
    ("queue-id==q1", {"a", "b"}),
    ("queue-id!=q1", {"c"}),
    ("queue-id in (q1, q3)", {"a", "b"}),
    ("queue-id notin (q1)", {"c"}),
    ("queue-id=q1,step=load", {"a"}),
    ("step", {"a", "c"}),
    ("!step", {"b"}),
    ("queue-id=q9", set()),
    ("wrong-label=q1", set()),
])
def test_list_with_label_selector(batch, selector, expected, ns):
    batch.create_namespaced_job(ns, job_manifest("a", {"queue-id": "q1", "step": "load"}))
    batch.create_namespaced_job(ns, job_manifest("b", {"queue-id": "q1"}))
    batch.create_namespaced_job(ns, job_manifest("c", {"queue-id": "q2", "step": "load"}))
    found = batch.list_namespaced_job(ns, label_selector=selector)
    assert {j.metadata.name for j in found.items} == expected
    assert found.metadata.resource_version


def test_bad_selector_is_400(batch, ns):
    with pytest.raises(ApiException) as err:
        batch.list_namespaced_job(ns, label_selector="a in b")
    assert err.value.status == 400


def test_namespaced_and_all_namespaces_list(cluster, batch, core, ns):
    admin = BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(ns, job_manifest("a", {"queue-id": "q1"}))
    admin.create_namespaced_job("other", job_manifest("a", {"queue-id": "q1"}))
    assert len(batch.list_namespaced_job(ns).items) == 1
    everywhere = admin.list_job_for_all_namespaces(label_selector="queue-id=q1")
    assert sorted(j.metadata.namespace for j in everywhere.items) == ["default", "other"]
    assert CoreV1Api(cluster.api_client()).list_pod_for_all_namespaces().items == []
    with pytest.raises(ApiException) as err:  # a Role is namespaced: no cluster-wide list
        core.list_pod_for_all_namespaces()
    assert err.value.status == 403 and "at the cluster scope" in json.loads(err.value.body)["message"]


def test_background_deletion_removes_the_job_at_once_and_its_pods_later(batch, core, ctl, ns):
    """Issue #13: Background propagation — the Job is gone at once, each pod terminates, then goes."""
    batch.create_namespaced_job(ns, job_manifest("etl-1", {"queue-id": "q1"}))
    batch.create_namespaced_job(ns, job_manifest("etl-2", {"queue-id": "q1"}))
    ctl.create_pod_for("etl-1", "Running")
    ctl.create_pod_for("etl-2", "Running")
    batch.delete_namespaced_job("etl-1", ns, propagation_policy="Background")
    with pytest.raises(ApiException) as err:
        batch.read_namespaced_job("etl-1", ns)
    assert err.value.status == 404
    assert len(core.list_namespaced_pod(ns, label_selector="job-name=etl-1").items) == 1  # not yet collected
    terminating = wait_until(lambda: [p for p in core.list_namespaced_pod(ns, label_selector="job-name=etl-1").items
                                      if p.metadata.deletion_timestamp], message="the pod is terminating")
    assert terminating[0].metadata.deletion_grace_period_seconds
    wait_until(lambda: core.list_namespaced_pod(ns, label_selector="job-name=etl-1").items == [],
               message="the terminated pod is gone")
    assert [p.metadata.labels["job-name"] for p in core.list_namespaced_pod(ns).items] == ["etl-2"]


def test_foreground_deletion_keeps_the_job_until_its_pods_are_gone(batch, core, ctl, ns):
    """Issue #13: Foreground — deletionTimestamp and the foregroundDeletion finalizer until no pod is left."""
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    ctl.create_pod_for("etl-1", "Running")
    batch.delete_namespaced_job("etl-1", ns, body=kubernetes.client.V1DeleteOptions(propagation_policy="Foreground"))
    deleting = batch.read_namespaced_job("etl-1", ns)
    assert deleting.metadata.deletion_timestamp and "foregroundDeletion" in deleting.metadata.finalizers
    wait_until(lambda: core.list_namespaced_pod(ns).items == [], message="the pods went first")
    wait_until(lambda: batch.list_namespaced_job(ns).items == [], message="then the Job")


def test_delete_without_propagation_orphans_pods(batch, core, ctl, ns):
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    ctl.create_pod_for("etl-1", "Running")
    batch.delete_namespaced_job("etl-1", ns)
    pods = core.list_namespaced_pod(ns, label_selector="job-name=etl-1").items
    assert len(pods) == 1 and not pods[0].metadata.owner_references


def test_delete_collection_by_label(cluster, batch, core, ctl, ns):
    """Delete-collection as a real server does it: the deploy Role may delete a collection of Jobs (a queue's
    forced stop, issue #12), never of pods; a set selector takes only the values named; Background removes
    the Jobs at once and their pods later; Foreground keeps each Job, being deleted, until its pods are gone;
    the answer is the list of what matched."""
    for name, queue, step in (("a", "q1", "s1"), ("b", "q1", "s2"), ("c", "q1", "s3"), ("d", "q2", "s1")):
        batch.create_namespaced_job(ns, job_manifest(name, {"queue-id": queue, "step": step}))
        ctl.create_pod_for(name, "Running")
    with pytest.raises(ApiException) as err:  # pods go with their Job (garbage collector), never by the manager
        core.delete_collection_namespaced_pod(ns, label_selector="queue-id=q2")
    assert err.value.status == 403
    answer = json.loads(batch.delete_collection_namespaced_job(
        ns, label_selector="queue-id=q1,step in (s1,s2)", propagation_policy="Background", _preload_content=False).data)
    assert answer["kind"] == "JobList" and sorted(j["metadata"]["name"] for j in answer["items"]) == ["a", "b"]
    assert sorted(j.metadata.name for j in batch.list_namespaced_job(ns).items) == ["c", "d"]
    wait_until(lambda: sorted(p.metadata.labels["job-name"] for p in core.list_namespaced_pod(ns).items) == ["c", "d"],
               message="the pods of a and b are collected")

    batch.delete_collection_namespaced_job(ns, label_selector="queue-id=q1", propagation_policy="Foreground")
    [job] = batch.list_namespaced_job(ns, label_selector="queue-id=q1").items
    assert job.metadata.name == "c" and job.metadata.deletion_timestamp
    assert "foregroundDeletion" in job.metadata.finalizers
    wait_until(lambda: [j.metadata.name for j in batch.list_namespaced_job(ns).items] == ["d"],
               message="c goes once its pod is gone")
    assert [p.metadata.labels["job-name"] for p in core.list_namespaced_pod(ns).items] == ["d"]


@pytest.mark.parametrize("status", [500, 429, 503, 409])
def test_fail_next(cluster, batch, status, ns):
    cluster.fail_next("POST", r"/namespaces/default/jobs$", status, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            batch.create_namespaced_job(ns, job_manifest("etl-1"))
        assert err.value.status == status
    assert batch.create_namespaced_job(ns, job_manifest("etl-1")).metadata.name == "etl-1"
    posts = cluster.requests_matching("POST", "/jobs$")
    assert len(posts) == 3 and posts[0][2] == {}
    assert ("GET", "/apis/batch/v1/namespaces/default/jobs", {"labelSelector": "a=b"}) not in cluster.requests
    batch.list_namespaced_job(ns, label_selector="a=b")
    assert ("GET", "/apis/batch/v1/namespaces/default/jobs", {"labelSelector": "a=b"}) in cluster.requests


def test_fail_next_custom_body_and_wildcard(cluster, batch, ns):
    cluster.fail_next("*", r"/jobs", 500, body={"kind": "Status", "code": 500, "message": "etcd timeout"})
    with pytest.raises(ApiException) as err:
        batch.list_namespaced_job(ns)
    assert err.value.status == 500 and "etcd timeout" in err.value.body
    assert batch.list_namespaced_job(ns).items == []


def test_controller_moves_job_through_phases(batch, core, ctl, ns):
    batch.create_namespaced_job(ns, job_manifest("etl-1", {"queue-id": "q1"}))
    pod = ctl.create_pod_for("etl-1", "Pending", reason="ImagePullBackOff")
    assert pod["metadata"]["labels"]["queue-id"] == "q1"
    read = core.read_namespaced_pod(pod["metadata"]["name"], ns)
    assert read.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
    assert read.metadata.owner_references[0].kind == "Job"

    job = ctl.mark_running("etl-1")
    assert job["status"]["active"] == 1
    v1 = batch.read_namespaced_job("etl-1", ns)
    assert v1.status.active == 1 and v1.status.start_time is not None and not v1.status.conditions
    assert core.read_namespaced_pod(pod["metadata"]["name"], ns).status.phase == "Running"

    ctl.mark_succeeded("etl-1")
    v1 = batch.read_namespaced_job("etl-1", ns)
    assert v1.status.succeeded == 1 and not v1.status.active and v1.status.completion_time is not None
    assert [c.type for c in v1.status.conditions] == ["Complete"]  # 1.30: the terminal condition only
    assert core.read_namespaced_pod(pod["metadata"]["name"], ns).status.phase == "Succeeded"

    ctl.delete_job("etl-1")  # the TTL controller
    assert batch.list_namespaced_job(ns).items == []
    wait_until(lambda: ctl.pods() == [], message="the garbage collector removed the pod")


@pytest.mark.parametrize("reason, message", [
    ("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
    ("DeadlineExceeded", "Job was active longer than specified deadline"),
])
def test_controller_failures(batch, ctl, reason, message, ns):
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    ctl.mark_running("etl-1")
    ctl.mark_failed("etl-1", reason=reason)
    v1 = batch.read_namespaced_job("etl-1", ns)
    assert [c.type for c in v1.status.conditions] == ["Failed"]  # 1.30
    failed = v1.status.conditions[0]
    assert failed.status == "True" and failed.reason == reason and failed.message == message
    assert v1.status.failed == 1
    if reason == "DeadlineExceeded":  # the controller deletes the running pods
        wait_until(lambda: ctl.pods("etl-1") == [], message="the running pod was deleted")
    else:
        assert ctl.pods("etl-1")[0]["status"]["phase"] == "Failed"


def test_retries_then_backoff_limit(batch, ctl, ns):
    created = batch.create_namespaced_job(ns, job_manifest("etl-1"))
    ctl.create_pod_for(created, "Failed", reason="OOMKilled")  # a V1Job works as well as a name
    ctl.create_pod_for(created, "Failed", reason="OOMKilled")
    ctl.mark_failed(created)
    assert batch.read_namespaced_job("etl-1", ns).status.failed == 2 and len(ctl.pods(created)) == 2


@pytest.mark.parametrize("phase, reason, check", [
    ("Pending", "Unschedulable", lambda s: s.conditions[0].reason == "Unschedulable"
        and s.conditions[0].status == "False" and not s.container_statuses),
    ("Running", "CrashLoopBackOff", lambda s: s.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
        and s.container_statuses[0].restart_count > 0),
    ("Failed", "OOMKilled", lambda s: s.container_statuses[0].state.terminated.reason == "OOMKilled"
        and s.container_statuses[0].state.terminated.exit_code == 137),
    ("Succeeded", None, lambda s: s.container_statuses[0].state.terminated.exit_code == 0),
])
def test_pod_failure_modes(batch, core, ctl, phase, reason, check, ns):
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    pod = ctl.create_pod_for("etl-1", phase, reason=reason)
    status = core.read_namespaced_pod(pod["metadata"]["name"], ns).status
    assert status.phase == phase and check(status)


def test_pod_log_with_tail_lines(batch, core, ctl, ns):
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    pending = ctl.create_pod_for("etl-1", "Pending")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log(pending["metadata"]["name"], ns)
    assert err.value.status == 400 and "waiting to start" in err.value.body
    pod = ctl.create_pod_for("etl-1", "Failed")
    ctl.set_pod_log(pod, "line 1\nline 2\nTraceback: boom\n")
    name = pod["metadata"]["name"]
    assert core.read_namespaced_pod_log(name, ns) == "line 1\nline 2\nTraceback: boom\n"
    assert core.read_namespaced_pod_log(name, ns, tail_lines=2, container="worker") == "line 2\nTraceback: boom\n"
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log("missing", ns)
    assert err.value.status == 404


def test_status_subresource_patch(cluster, ns):
    batch = BatchV1Api(cluster.api_client())  # the controller's rights, not the manager's
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    before = batch.read_namespaced_job("etl-1", ns).metadata.resource_version
    patched = batch.patch_namespaced_job_status("etl-1", ns, {"status": {"active": 1}, "spec": {"parallelism": 5}})
    assert patched.status.active == 1 and patched.spec.parallelism == 1
    assert patched.metadata.resource_version != before
    # A patch of the main resource ignores status; labels merge.
    patched = batch.patch_namespaced_job("etl-1", ns, {"metadata": {"labels": {"stopping": "true"}},
                                                         "status": {"active": 7}})
    assert patched.metadata.labels["stopping"] == "true" and patched.status.active == 1
    conditions = [{"type": "Complete", "status": "True"}]
    batch.patch_namespaced_job_status("etl-1", ns, {"status": {"conditions": conditions}})
    patched = batch.patch_namespaced_job_status("etl-1", ns, {"status": {"conditions": [
        {"type": "SuccessCriteriaMet", "status": "True"}]}})  # strategic merge: merged by type
    assert {c.type for c in patched.status.conditions} == {"Complete", "SuccessCriteriaMet"}
    with pytest.raises(ApiException) as err:  # the pod template of a Job is immutable
        batch.patch_namespaced_job("etl-1", ns, {"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}})
    assert err.value.status == 422


def test_unemulated_features_are_rejected_not_ignored(cluster, ns):
    batch, core = BatchV1Api(cluster.api_client()), CoreV1Api(cluster.api_client())
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    with pytest.raises(ApiException) as err:  # a list body is sent as a JSON patch
        batch.patch_namespaced_job("etl-1", ns, [{"op": "add", "path": "/spec/suspend", "value": True}])
    assert err.value.status == 415
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(ns, field_selector="status.phase=Running")
    assert err.value.status == 400


def test_discovery_version_and_auth(cluster, ns):
    api_client = cluster.api_client()
    assert kubernetes.client.VersionApi(api_client).get_code().minor == "30"
    groups = kubernetes.client.ApisApi(api_client).get_api_versions()
    assert [g.name for g in groups.groups] == ["batch"]
    assert any(r.name == "jobs" for r in BatchV1Api(api_client).get_api_resources().resources)
    assert any(r.name == "pods/log" for r in CoreV1Api(api_client).get_api_resources().resources)
    anonymous = kubernetes.client.Configuration()
    anonymous.host = cluster.url
    with pytest.raises(ApiException) as err:
        BatchV1Api(kubernetes.client.ApiClient(anonymous)).list_namespaced_job(ns)
    assert err.value.status == 401


def test_kubeconfig(cluster, tmp_path, ns):
    path = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    api_client = kubernetes.config.new_client_from_config(config_file=path)
    assert BatchV1Api(api_client).list_namespaced_job(ns).items == []
    api_client.close()


def test_concurrent_clients(cluster, ns):
    errors = []

    def create(i):
        try:
            BatchV1Api(cluster.api_client()).create_namespaced_job(ns, job_manifest(f"job-{i}", {"n": str(i)}))
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(JobController(cluster).jobs()) == 20
    versions = {j["metadata"]["resourceVersion"] for j in JobController(cluster).jobs()}
    assert len(versions) == 20


def test_label_selector_parser_directly():
    match = parse_label_selector("a in (x,y),b!=z,!c,d")
    assert match({"a": "x", "d": ""}) and not match({"a": "x", "d": "", "c": "1"})
    assert not match({"a": "w", "d": ""}) and not match({"a": "x"})


# --------------------------------------------------------------------------- issue #13: as strict as a real server


def test_the_deploy_role_grants_the_managers_verbs_and_refuses_the_rest(target, batch, core, ns):
    """Issue #13 "RBAC enforced per token": deploy/rbac.yaml is enough for what the launcher does (Jobs
    create/get/list/delete, pods list/get, Secrets create/patch/delete) and a verb it lacks is refused
    with the API server's Forbidden Status."""
    batch.create_namespaced_job(ns, worker_job("rbac-1", "sleeps"))
    assert batch.read_namespaced_job("rbac-1", ns).metadata.name == "rbac-1"
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == ["rbac-1"]
    core.list_namespaced_pod(ns)
    core.create_namespaced_secret(ns, {"metadata": {"name": "cred-1"}, "data": {"token": "dG9rZW4="}})
    core.patch_namespaced_secret("cred-1", ns, {"metadata": {"labels": {"owned": "yes"}}})
    core.delete_namespaced_secret("cred-1", ns)
    batch.delete_namespaced_job("rbac-1", ns, propagation_policy="Background")

    with pytest.raises(ApiException) as err:  # the manager never reads a Secret back
        core.list_namespaced_secret(ns)
    status = json.loads(err.value.body)
    assert err.value.status == 403 and status["reason"] == "Forbidden" and status["kind"] == "Status"
    assert status["message"] == (f'secrets is forbidden: User "{target.username}" cannot list resource "secrets" '
                                 f'in API group "" in the namespace "{ns}"')
    assert status["details"]["kind"] == "secrets"
    with pytest.raises(ApiException) as err:  # nor creates pods itself
        core.create_namespaced_pod(ns, {"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "busybox:1.36"}]}})
    assert err.value.status == 403 and 'cannot create resource "pods"' in json.loads(err.value.body)["message"]


def test_lists_page_with_limit_and_continue(batch, ns):
    """Issue #13 "limit/continue paging honoured"."""
    for i in range(5):
        batch.create_namespaced_job(ns, job_manifest(f"page-{i}"))
    first = batch.list_namespaced_job(ns, limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    names, token = [j.metadata.name for j in first.items], first.metadata._continue
    while token:
        page = batch.list_namespaced_job(ns, limit=2, _continue=token)
        names += [j.metadata.name for j in page.items]
        token = page.metadata._continue
    assert sorted(names) == [f"page-{i}" for i in range(5)] and len(set(names)) == 5


def test_an_expired_continue_token_is_410_expired(cluster, batch, ns):
    """Issue #13 "continue tokens expire (a test hook to expire them) → 410"."""
    for i in range(3):
        batch.create_namespaced_job(ns, job_manifest(f"page-{i}"))
    first = batch.list_namespaced_job(ns, limit=1)
    cluster.expire_continue_tokens()
    with pytest.raises(ApiException) as err:
        batch.list_namespaced_job(ns, limit=1, _continue=first.metadata._continue)
    status = json.loads(err.value.body)
    assert err.value.status == 410 and status["reason"] == "Expired" and "too old" in status["message"]
    assert batch.list_namespaced_job(ns, limit=1).items  # a new listing works


@pytest.mark.parametrize("version, first, terminal", [("1.30", [], "Complete"), ("1.31", ["SuccessCriteriaMet"], "Complete")])
def test_success_conditions_follow_the_server_version(version, first, terminal):
    """Issue #13 "Job conditions as the real controller sets them (1.28–1.30 vs 1.31)"."""
    with KubeCluster(version=version) as cluster:
        batch = BatchV1Api(cluster.api_client())
        batch.create_namespaced_job("default", job_manifest("etl-1"))
        ctl = JobController(cluster)
        ctl.mark_running("etl-1")
        done = ctl.mark_succeeded("etl-1")
        assert [c["type"] for c in done["status"]["conditions"]] == (first or [terminal])

        def types():
            return [c.type for c in batch.read_namespaced_job("etl-1", "default").status.conditions or []]

        wait_until(lambda: terminal in types(), message="the terminal condition")
        assert types() == first + [terminal]


def test_on_1_31_failed_comes_only_after_the_pods_stopped():
    """Issue #13: 1.31 sets FailureTarget first; Failed once no pod is running or terminating."""
    with KubeCluster(version="1.31") as cluster:
        batch = BatchV1Api(cluster.api_client())
        batch.create_namespaced_job("default", job_manifest("etl-1"))
        ctl = JobController(cluster)
        ctl.mark_running("etl-1")
        failed = ctl.mark_failed("etl-1", reason="DeadlineExceeded")
        assert [c["type"] for c in failed["status"]["conditions"]] == ["FailureTarget"]
        assert ctl.pods("etl-1")[0]["metadata"]["deletionTimestamp"]  # the running pod is terminating
        wait_until(lambda: ctl.pods("etl-1") == [], message="the pod went")
        conditions = wait_until(lambda: len(ctl.job("etl-1")["status"]["conditions"]) == 2
                                and ctl.job("etl-1")["status"]["conditions"], message="Failed added")
        assert [(c["type"], c["reason"]) for c in conditions] == [("FailureTarget", "DeadlineExceeded"),
                                                                  ("Failed", "DeadlineExceeded")]


def test_a_pod_with_a_sidecar_needs_the_container_named_for_its_log(cluster, batch, core, ns):
    """Issue #13 "pods with more than one container": the real 400 without a container name."""
    batch.create_namespaced_job(ns, job_manifest("etl-1"))
    ctl = JobController(cluster, ns, sidecars=("istio-proxy",))
    pod = ctl.create_pod_for("etl-1", "Running")
    ctl.set_pod_log(pod, "worker line\n")
    name = pod["metadata"]["name"]
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log(name, ns)
    assert err.value.status == 400 and json.loads(err.value.body)["message"] == (
        f"a container name must be specified for pod {name}, choose one of: [worker istio-proxy]")
    assert core.read_namespaced_pod_log(name, ns, container="worker") == "worker line\n"
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod_log(name, ns, container="nope")
    assert err.value.status == 400


# --------------------------------------------------------------------------- steps played by the worker image

REAL_TIMEOUT = 180  # a real cluster pulls the image and runs the pod; the emulator answers at once


def _terminal(batch, ns, name):
    job = batch.read_namespaced_job(name, ns)
    return next((c for c in job.status.conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"),
                None)


@pytest.mark.parametrize("kind, condition, exit_code, reason", [
    ("succeeds", "Complete", 0, "Completed"),
    ("fails", "Failed", 3, "Error"),
    ("oom", "Failed", 137, "OOMKilled"),
])
def test_a_step_ends_as_its_container_did(target, batch, core, ns, kind, condition, exit_code, reason):
    """Issue #13 contract: succeeds / fails / exceeds its memory — the same Job condition and container
    state from the emulator and from a real cluster running the worker image."""
    name = f"worker-{kind}"
    batch.create_namespaced_job(ns, worker_job(name, kind))
    play(target, name, kind)
    ended = wait_until(lambda: _terminal(batch, ns, name), timeout=REAL_TIMEOUT, message=f"{name} ended")
    assert ended.type == condition
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert terminated.exit_code == exit_code and terminated.reason == reason


def test_a_steps_log_is_read_by_container(target, batch, core, ns):
    """Issue #13 contract: a step that logs — read with its container named, as the launcher does."""
    batch.create_namespaced_job(ns, worker_job("worker-logs", "logs"))
    play(target, "worker-logs", "logs")
    wait_until(lambda: _terminal(batch, ns, "worker-logs"), timeout=REAL_TIMEOUT, message="the step ended")
    pod = core.list_namespaced_pod(ns, label_selector="job-name=worker-logs").items[0]
    assert core.read_namespaced_pod_log(pod.metadata.name, ns, container="worker") == "line 1\nline 2\nline 3\n"


def test_a_step_past_its_deadline_fails_with_deadline_exceeded_and_loses_its_pods(target, batch, core, ns):
    """Issue #13 "DeadlineExceeded reason on the Failed condition with running pods deleted"."""
    batch.create_namespaced_job(ns, worker_job("worker-sleeps", "sleeps", deadline=5))
    if target.emulator is not None:
        ctl = JobController(target.emulator, ns)
        ctl.mark_running("worker-sleeps")
        ctl.mark_failed("worker-sleeps", reason="DeadlineExceeded")
    failed = wait_until(lambda: _terminal(batch, ns, "worker-sleeps"), timeout=REAL_TIMEOUT, message="deadline")
    assert failed.type == "Failed" and failed.reason == "DeadlineExceeded"
    wait_until(lambda: core.list_namespaced_pod(ns, label_selector="job-name=worker-sleeps").items == [],
               timeout=REAL_TIMEOUT, message="the running pod was deleted")


# --------------------------------------------------------------------------- issue #12: watch (kube_watch)


def watch_events(fn, ns, *, timeout=2, stop=None, **kwargs):
    """The events of one watch request read to its end (the server closes it at timeoutSeconds), or
    until `stop(events)` says enough; each event as the JSON line the server sent."""
    from kubernetes.watch.watch import iter_resp_lines

    resp = fn(ns, watch=True, timeout_seconds=timeout, _preload_content=False, **kwargs)
    events = []
    try:
        for line in iter_resp_lines(resp):
            events.append(json.loads(line))
            if stop and stop(events):
                break
    finally:
        resp.release_conn()
    return events


@pytest.fixture
def admin_batch(target):
    """Changes the service account may not make (patching labels) are made by the admin."""
    return BatchV1Api(target.admin)


def _named(events, name):
    return [e["type"] for e in events if e["object"].get("metadata", {}).get("name") == name]


def test_a_watch_from_a_lists_version_sees_every_later_change_in_order(batch, admin_batch, ns):
    """Issue #12 (watch, resourceVersion): list, then watch from the list's resourceVersion — every change
    after the list arrives once, in order (ADDED, MODIFIED, DELETED with the deletion's version), and the
    server ends the stream at timeoutSeconds."""
    batch.create_namespaced_job(ns, job_manifest("watch-a"))
    listed = batch.list_namespaced_job(ns)
    batch.create_namespaced_job(ns, job_manifest("watch-b"))
    admin_batch.patch_namespaced_job("watch-a", ns, {"metadata": {"labels": {"seen": "yes"}}})
    batch.delete_namespaced_job("watch-b", ns, propagation_policy="Background")
    events = watch_events(batch.list_namespaced_job, ns, resource_version=listed.metadata.resource_version,
                          stop=lambda ev: "DELETED" in _named(ev, "watch-b"))
    b = _named(events, "watch-b")
    assert b[0] == "ADDED" and b[-1] == "DELETED" and "ADDED" not in _named(events, "watch-a")
    assert any(e["type"] == "MODIFIED" and e["object"]["metadata"]["labels"].get("seen") == "yes"
               for e in events if e["object"]["metadata"]["name"] == "watch-a")
    deleted = next(e for e in events if e["type"] == "DELETED")
    assert deleted["object"]["kind"] == "Job" and deleted["object"]["metadata"]["resourceVersion"]
    # The stream ends by itself at timeoutSeconds (no stop condition: read to the end).
    assert _named(watch_events(batch.list_namespaced_job, ns, timeout=1,
                               resource_version=deleted["object"]["metadata"]["resourceVersion"]), "watch-b") == []


def test_a_watch_without_a_version_starts_with_what_exists_as_added(batch, ns):
    """Issue #12 (watch): resourceVersion unset — synthetic ADDED events for the current objects first."""
    for name in ("now-a", "now-b"):
        batch.create_namespaced_job(ns, job_manifest(name))
    events = watch_events(batch.list_namespaced_job, ns, timeout=1, stop=lambda ev: len(ev) >= 2)
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in events[:2]) == [
        ("ADDED", "now-a"), ("ADDED", "now-b")]


def test_a_selector_watch_sees_label_changes_as_added_and_deleted(batch, admin_batch, ns):
    """Issue #12 (watch, labelSelector): an object that starts matching arrives as ADDED, one that stops
    matching as DELETED."""
    batch.create_namespaced_job(ns, job_manifest("sel-a"))
    rv = batch.list_namespaced_job(ns).metadata.resource_version
    admin_batch.patch_namespaced_job("sel-a", ns, {"metadata": {"labels": {"tier": "gold"}}})
    admin_batch.patch_namespaced_job("sel-a", ns, {"metadata": {"labels": {"tier": None}}})
    events = watch_events(batch.list_namespaced_job, ns, resource_version=rv, label_selector="tier=gold",
                          stop=lambda ev: "DELETED" in _named(ev, "sel-a"))
    assert _named(events, "sel-a") == ["ADDED", "DELETED"]


def test_the_deploy_role_may_watch_jobs_and_pods_but_not_secrets(target, batch, core, ns):
    """Issue #12 (RBAC verb watch): deploy/rbac.yaml grants watch on jobs and pods; watching Secrets is
    refused with the Forbidden Status."""
    watch_events(batch.list_namespaced_job, ns, timeout=1)
    watch_events(core.list_namespaced_pod, ns, timeout=1)
    with pytest.raises(ApiException) as err:
        watch_events(core.list_namespaced_secret, ns, timeout=1)
    assert err.value.status == 403 and 'cannot watch resource "secrets"' in json.loads(err.value.body)["message"]


def test_a_watch_from_a_forgotten_version_gets_an_error_event_410_expired(cluster, batch, ns):
    """Issue #12 (410 Gone): history is bounded — a watch from a version older than what is kept gets
    200 and then one ERROR event, a Status with code 410 reason Expired, and the stream ends; both when
    the history overflowed and after a compaction."""
    batch.create_namespaced_job(ns, job_manifest("old-0"))
    rv = batch.list_namespaced_job(ns).metadata.resource_version
    cluster.store.objects.watch_log.capacity = 3
    for i in range(1, 5):
        batch.create_namespaced_job(ns, job_manifest(f"old-{i}"))
    events = watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout=5)
    assert [e["type"] for e in events] == ["ERROR"]
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"].startswith(f"too old resource version: {rv} (")
    latest = batch.list_namespaced_job(ns).metadata.resource_version
    assert watch_events(batch.list_namespaced_job, ns, resource_version=latest, timeout=1) == []
    cluster.compact_watch_history()
    assert [e["type"] for e in watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout=5)] == ["ERROR"]


def test_bookmarks_carry_only_the_version_and_only_when_allowed(cluster, batch, ns):
    """Issue #12 (allowWatchBookmarks): BOOKMARK events carry kind, apiVersion and resourceVersion only,
    and come only to a watch that allowed them."""
    cluster.bookmark_interval = 0.2
    rv = batch.list_namespaced_job(ns).metadata.resource_version
    events = watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout=1, allow_watch_bookmarks=True)
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"resourceVersion": rv}}
    assert watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout=1) == []


def test_a_dropped_watch_connection_breaks_mid_stream(cluster, batch, ns):
    """Issue #12 (dropped watch connection): the test hook cuts open watches without the final chunk,
    so a client sees a broken stream (and must watch again from its last version)."""
    import urllib3

    rv = batch.list_namespaced_job(ns).metadata.resource_version
    errors = []

    def watch():
        try:
            watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout=30)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=watch)
    thread.start()
    wait_until(lambda: any(r[2].get("watch") for r in cluster.requests))
    batch.create_namespaced_job(ns, job_manifest("drop-a"))
    cluster.drop_watches()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors
