"""The emulator's list path at scale (issue #12, "reconcile: the bare list of Jobs and pods"): faster, never kinder.

Lists come from an index kept in key order with each object's JSON (kube_store.py). These pin what
that must not change (order, paging, selectors, a change seen by the next list, garbage collection)
and what it must do: a page neither copies nor re-encodes the stored objects.
"""
import copy
import json

import pytest
from kubernetes.client import BatchV1Api, CoreV1Api

from tests.helpers import wait_until

from . import kube, kube_store
from .kube import JobController, KubeCluster
from .test_kube_emulator import job_manifest


@pytest.fixture
def cluster():
    with KubeCluster() as cluster:
        yield cluster


def _list(api_client, path, **query):
    """A raw list response (JSON dict), as the product's launcher reads it."""
    response = api_client.call_api(path, "GET", query_params=list(query.items()), auth_settings=["BearerToken"],
                                   _preload_content=False, response_type=None)
    return json.loads(response[0].data)


def _names(page):
    return [item["metadata"]["name"] for item in page["items"]]


def _walk(api_client, path, limit, **query):
    names, token = [], None
    while True:
        page = _list(api_client, path, limit=limit, **({"continue": token} if token else {}), **query)
        names += _names(page)
        token = page["metadata"].get("continue")
        if not token:
            return names


def test_it_pages_in_name_order_within_namespace_and_selector(cluster):
    """Issue #12 (emulator list path): paging by position keeps the order, the namespace and the selector."""
    batch, client = BatchV1Api(cluster.api_client()), cluster.api_client()
    for ns in ("a-ns", "b-ns"):
        for i in (7, 3, 11, 0, 5):
            batch.create_namespaced_job(ns, job_manifest(f"job-{i:02d}", {"parity": "even" if i % 2 == 0 else "odd"}))
    assert _walk(client, "/apis/batch/v1/namespaces/b-ns/jobs", 2) == [f"job-{i:02d}" for i in (0, 3, 5, 7, 11)]
    assert _walk(client, "/apis/batch/v1/namespaces/a-ns/jobs", 1, labelSelector="parity=odd") == \
        ["job-03", "job-05", "job-07", "job-11"]
    everywhere = _walk(client, "/apis/batch/v1/jobs", 3, labelSelector="parity in (even)")
    assert everywhere == ["job-00", "job-00"]


def test_it_shows_a_change_made_between_pages(cluster):
    """Issue #12 (emulator list path): an object created past the cursor shows up, one before it does not."""
    batch, client = BatchV1Api(cluster.api_client()), cluster.api_client()
    for i in (1, 3, 5):
        batch.create_namespaced_job("default", job_manifest(f"job-{i}"))
    first = _list(client, "/apis/batch/v1/namespaces/default/jobs", limit=2)
    assert _names(first) == ["job-1", "job-3"]
    batch.create_namespaced_job("default", job_manifest("job-0"))
    batch.create_namespaced_job("default", job_manifest("job-4"))
    rest = _list(client, "/apis/batch/v1/namespaces/default/jobs", limit=2, **{"continue": first["metadata"]["continue"]})
    assert _names(rest) == ["job-4", "job-5"] and "continue" not in rest["metadata"]


def test_it_lists_what_was_last_written(cluster):
    """Issue #12 (emulator list path): the encoded copy a list serves is replaced on every write."""
    batch, client = BatchV1Api(cluster.api_client()), cluster.api_client()
    batch.create_namespaced_job("default", job_manifest("etl-1", {"stage": "one"}))
    path = "/apis/batch/v1/namespaces/default/jobs"
    assert _list(client, path)["items"][0]["metadata"]["labels"]["stage"] == "one"
    batch.patch_namespaced_job("etl-1", "default", {"metadata": {"labels": {"stage": "two"}}})
    JobController(cluster).mark_running("etl-1")
    listed = _list(client, path)["items"][0]
    assert listed["metadata"]["labels"]["stage"] == "two" and listed["status"]["active"] == 1
    assert _list(client, path, labelSelector="stage=one")["items"] == []
    batch.delete_namespaced_job("etl-1", "default", propagation_policy="Background")
    assert _list(client, path)["items"] == []


def test_the_list_resource_version_never_goes_back(cluster):
    """Issue #12 (emulator list path): like etcd's revision, a deletion moves it on; before, deleting
    the newest object made the next list report an older version."""
    batch, client = BatchV1Api(cluster.api_client()), cluster.api_client()
    path = "/apis/batch/v1/namespaces/default/jobs"
    batch.create_namespaced_job("default", job_manifest("old"))
    batch.create_namespaced_job("default", job_manifest("new"))
    before = int(_list(client, path)["metadata"]["resourceVersion"])
    batch.delete_namespaced_job("new", "default", propagation_policy="Background")
    assert int(_list(client, path)["metadata"]["resourceVersion"]) > before


def test_remaining_item_count_only_without_a_selector(cluster):
    """Issue #12 (emulator list path): a real API server leaves remainingItemCount out when a label
    selector filters the list (it cannot know it); without one it counts what is left."""
    batch, client = BatchV1Api(cluster.api_client()), cluster.api_client()
    for i in range(5):
        batch.create_namespaced_job("default", job_manifest(f"job-{i}"))
    batch.create_namespaced_job("other", job_manifest("job-9"))
    path = "/apis/batch/v1/namespaces/default/jobs"
    assert _list(client, path, limit=2)["metadata"]["remainingItemCount"] == 3
    selected = _list(client, path, limit=2, labelSelector="app.kubernetes.io/managed-by")["metadata"]
    assert selected["continue"] and "remainingItemCount" not in selected


def test_a_page_neither_copies_nor_reencodes_stored_objects(cluster, monkeypatch):
    """Issue #12 (reconcile: the bare list of 2,000 Jobs + pods took 7.8 s): each page deep-copied and
    encoded every object past its start. Now a page costs its own size: no copy, no encoding of objects."""
    batch, client = BatchV1Api(cluster.api_client()), cluster.api_client()
    for i in range(30):
        batch.create_namespaced_job("default", job_manifest(f"job-{i:02d}"))
    copies, encodings = [], []
    real_deepcopy, real_dumps = copy.deepcopy, json.dumps
    monkeypatch.setattr(kube.copy, "deepcopy", lambda obj, *a: copies.append(1) or real_deepcopy(obj, *a))
    monkeypatch.setattr(kube_store.json, "dumps", lambda obj, *a, **k: encodings.append(obj) or real_dumps(obj, *a, **k))
    names = _walk(client, "/apis/batch/v1/namespaces/default/jobs", 4, labelSelector="app.kubernetes.io/managed-by")
    assert names == [f"job-{i:02d}" for i in range(30)]
    assert copies == []
    # Encoded while paging: continue tokens and each page's envelope, never a Job (alone or among items).
    assert [obj for obj in encodings if isinstance(obj, dict) and (obj.get("kind") == "Job" or obj.get("items"))] == []


def test_garbage_collection_still_finds_pods_and_owned_secrets(cluster):
    """Issue #12 (emulator list path): the collector's look-ups go through the owner indexes now; Background
    and Foreground deletion still remove exactly the deleted Job's pods and owned Secrets."""
    batch, core = BatchV1Api(cluster.api_client()), CoreV1Api(cluster.api_client())
    ctl = JobController(cluster)
    for name in ("keep", "back", "fore"):
        job = batch.create_namespaced_job("default", job_manifest(name))
        ctl.mark_running(name)
        core.create_namespaced_secret("default", {"metadata": {"name": f"{name}-telemetry", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job.metadata.uid}]},
            "stringData": {"token": "x"}})
    batch.delete_namespaced_job("back", "default", propagation_policy="Background")
    batch.delete_namespaced_job("fore", "default", propagation_policy="Foreground")

    def left():
        pods = {p.metadata.labels["job-name"] for p in core.list_namespaced_pod("default").items}
        return pods, {s.metadata.name for s in core.list_namespaced_secret("default").items}, \
            {j.metadata.name for j in batch.list_namespaced_job("default").items}

    wait_until(lambda: left() == ({"keep"}, {"keep-telemetry"}, {"keep"}), timeout=10)
