"""The emulator's kubelet and garbage collector where a pod's Secret or an object's owner is missing.

As strict as a real cluster where the launcher depends on it (issue #12, a Job created before its
credential Secret):

- A container whose environment takes a non-optional ``secretKeyRef`` (or ``envFrom`` a non-optional
  ``secretRef``) does not start while that Secret or key is missing: the kubelet reports it waiting
  in ``CreateContainerConfigError`` (``Error: secret "x" not found``, ``Error: couldn't find key k in
  Secret ns/x``), the pod stays ``Pending``, and the kubelet retries until the Secret exists — then
  the container starts. Optional references never hold a pod.
- An object created with ``ownerReferences`` whose owners are all absent (no object of that kind and
  name with that uid in the namespace) is deleted by the garbage collector a moment later. An owner
  deleted afterwards is the store's deletion path (``KubeStore._collect_owned``).

``JobController.mark_running/succeeded/failed`` (the kubelet's part, also behind the process's
``/_emulator/mark``) go through ``hold_until_configured``; ``create_pod_for`` and ``set_pod_phase``
stay raw, for tests that set a pod's status exactly.
"""
from __future__ import annotations

STARTED_PHASES = ("Running", "Succeeded", "Failed")
_PLURAL_OF_KIND = {"Job": "jobs", "Pod": "pods", "Secret": "secrets"}



def missing_config(store, namespace, pod_spec) -> tuple[str, str] | None:
    """(Secret name, kubelet message) of the first Secret or key a container needs and cannot get."""
    for container in (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or []):
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if not ref or ref.get("optional"):
                continue
            secret = store.get("secrets", namespace, ref["name"])
            if secret is None:
                return ref["name"], f'Error: secret "{ref["name"]}" not found'
            if ref.get("key") not in (secret.get("data") or {}):
                return ref["name"], f"Error: couldn't find key {ref.get('key')} in Secret {namespace}/{ref['name']}"
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref and not ref.get("optional") and store.get("secrets", namespace, ref["name"]) is None:
                return ref["name"], f'Error: secret "{ref["name"]}" not found'
    return None


def hold_until_configured(controller, job, action):
    """If the Job's pods cannot start for a missing Secret, hold them in CreateContainerConfigError and
    run ``action`` (the mark that was asked for) once the Secret exists; returns the Job as held, or
    None when nothing holds it (a pod already started: its configuration was read then)."""
    from .kube import now_iso  # kube imports this module: not at import time

    store, namespace = controller.store, controller.namespace
    with store.lock:
        current = controller.job(job)
        pods = controller.pods(current)
        if any((p.get("status") or {}).get("phase") in STARTED_PHASES for p in pods):
            return None
        problem = missing_config(store, namespace, current["spec"]["template"].get("spec") or {})
        if problem is None:
            return None
        secret, message = problem
        if pods:
            for pod in pods:
                controller.set_pod_phase(pod, "Pending", "CreateContainerConfigError", message=message)
        else:
            controller.create_pod_for(current, "Pending", "CreateContainerConfigError", message=message)
        # The Job controller started the Job and counts a pending pod as active; none is ready.
        status = current.get("status") or {}
        current["status"] = {**status, "startTime": status.get("startTime") or now_iso(),
                             "active": max(len(pods), 1), "ready": 0}
        store.put("jobs", current)
        store.config_waits.setdefault((namespace, secret), []).append(
            (current["metadata"]["name"], current["metadata"]["uid"], action))
        return store.get("jobs", namespace, current["metadata"]["name"])


def created(store, plural, obj) -> None:
    """After the API server stored ``obj``: wake the pods waiting for it (a Secret), and collect it if
    it names only absent owners."""
    meta = obj["metadata"]
    if plural == "secrets":
        for job_name, job_uid, action in store.config_waits.pop((meta["namespace"], meta["name"]), []):
            store.later(store.gc_delay, _retry, store, meta["namespace"], job_name, job_uid, action)
    refs = meta.get("ownerReferences") or []
    if refs and not any(_owner_present(store, meta["namespace"], ref) for ref in refs):
        store.later(store.gc_delay, _collect_if_unowned, store, plural, meta["namespace"], meta["name"], meta["uid"])


def _retry(store, namespace, job_name, job_uid, action) -> None:
    """The kubelet's retry: do what was held, unless the Job went meanwhile (its pods with it)."""
    job = store.get("jobs", namespace, job_name)
    if job is not None and job["metadata"]["uid"] == job_uid:
        action()


def _owner_present(store, namespace, ref) -> bool:
    plural = _PLURAL_OF_KIND.get(ref.get("kind"))
    if plural is None:
        return True  # a kind the emulator does not serve: never collect on its account
    owner = store.get(plural, namespace, ref.get("name", ""))
    return owner is not None and owner["metadata"].get("uid") == ref.get("uid")


def _collect_if_unowned(store, plural, namespace, name, uid) -> None:
    current = store.get(plural, namespace, name)
    if current is None or current["metadata"]["uid"] != uid:
        return
    refs = current["metadata"].get("ownerReferences") or []
    if refs and not any(_owner_present(store, namespace, ref) for ref in refs):
        store.delete(plural, namespace, name, "Background")
