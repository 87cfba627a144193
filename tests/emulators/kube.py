"""An in-memory Kubernetes API emulator over real HTTP, for the launcher tests.

    with KubeCluster() as cluster:
        batch = kubernetes.client.BatchV1Api(cluster.api_client())
        batch.create_namespaced_job("default", manifest)
        JobController(cluster).mark_succeeded("my-job")

Serves batch/v1 Jobs, core/v1 Pods and Secrets (namespaced and all-namespaces lists with labelSelector,
``limit``/``continue`` paging, create, get, merge/strategic-merge patch, /status, delete with
propagationPolicy, delete-collection, pods/log, collection watches with bounded history — kube_watch)
plus discovery. fieldSelector, watches of one object, replace and JSON patch are rejected, not ignored.
No controllers: ``JobController`` plays the Job controller, kubelet and TTL controller from the test
thread. A few API-server validations are applied (names, label syntax, Job restartPolicy, immutable pod
template, Secret data in base64) because real clusters enforce them.

As strict as a real server where the product depends on it (issue #13): deletion is asynchronous
(Background: the Job at once, its pods and owned Secrets later, each pod terminating first;
Foreground: the Job stays with the ``foregroundDeletion`` finalizer until its pods are gone; Orphan
leaves them); continue tokens expire (``expire_continue_tokens`` → 410 Expired); Job conditions
follow ``version`` (1.31: ``SuccessCriteriaMet``/``FailureTarget`` first); ``sidecars`` make pods of
several containers, whose logs need the container named; ``tls=True`` serves HTTPS with a throw-away
CA (``ca_file``); ``bind_rbac("deploy/rbac.yaml")`` gives a token limited to that Role (403
Forbidden with the real Status), and the admin token may act as a user with ``Impersonate-User``.
A pod whose non-optional Secret is missing waits in ``CreateContainerConfigError`` until it exists, and
an object created with only absent owners is garbage-collected (``kube_kubelet``).
"""
import base64
import copy
import datetime
import http.server
import json
import re
import secrets
import socket
import ssl
import tempfile
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import kubernetes

from . import kube_kubelet
from .kube_rbac import Rbac, forbidden_message
from .kube_rbac import request_for as rbac_request_for
from .kube_store import ObjectIndex, list_body
from .kube_watch import TRUE, WatchStream
from .tls import make_server_certificate

SERVER_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0-emulated", "gitCommit": "0" * 40,
                  "gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2",
                  "compiler": "gc", "platform": "linux/amd64"}
# plural -> (group, version, kind, URL prefix)
RESOURCES = {"jobs": ("batch", "v1", "Job", "/apis/batch/v1"), "pods": ("", "v1", "Pod", "/api/v1"),
             "secrets": ("", "v1", "Secret", "/api/v1")}
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")
_PATH = re.compile(r"^(?P<prefix>/api/v1|/apis/batch/v1)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
# Strategic-merge-patch merge keys of the lists our objects carry; other lists are replaced.
_MERGE_KEYS = {"conditions": "type", "containers": "name", "initContainers": "name", "env": "name",
               "volumes": "name", "volumeMounts": "name", "ownerReferences": "uid"}
_NO_RESOURCE = "the server could not find the requested resource"
ADMIN = "kubernetes-admin"
_EXPIRED_MESSAGE = ("The provided continue parameter is too old to display a consistent list result. You can start "
                    "a new list without the continue parameter, or use the continue token in this response to "
                    "retrieve the remainder of the results. Continuing with the provided token results in an "
                    "inconsistent list - objects that were created, modified, or deleted between the time the "
                    "first chunk was returned and now may show up in the list.")


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code, reason, message, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return {**body, "details": details} if details else body


class ApiError(Exception):
    """Raised inside the emulator; rendered as a Kubernetes ``Status`` response."""

    def __init__(self, code, message, reason=None, details=None, metadata=None):
        super().__init__(message)
        self.code, self.message, self.details, self.metadata = code, message, details, metadata
        self.reason = reason or _REASONS.get(code, "Unknown")

    def body(self):
        return {**status_body(self.code, self.reason, self.message, self.details), "metadata": self.metadata or {}}


def _full_name(plural):
    group = RESOURCES[plural][0]
    return f"{plural}.{group}" if group else plural


def not_found(plural, name):
    return ApiError(404, f'{_full_name(plural)} "{name}" not found', "NotFound",
                    {"name": name, "group": RESOURCES[plural][0], "kind": plural})


# --------------------------------------------------------------------------- selectors

_REQ = re.compile(r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
                  r"(?:(?P<op>==|!=|=)\s*(?P<val>[-A-Za-z0-9_.]*)"
                  r"|\s(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?\s*(?:,|$)")


def parse_label_selector(text):
    """``a=b,c==d,e!=f,g in (x,y),h notin (z),i,!j`` -> predicate on a labels dict (400 if malformed)."""
    preds, pos, text = [], 0, (text or "").strip()
    while pos < len(text):
        m = _REQ.match(text, pos)
        if not m or m.end() == pos or (m["neg"] and (m["op"] or m["setop"])):
            raise ApiError(400, f"unable to parse requirement: found {text[pos:]!r}")
        pos = m.end()
        key, op, val = m["key"], m["op"], m["val"]
        if m["setop"]:
            values = {v.strip() for v in m["set"].split(",") if v.strip()}
            if not values:
                raise ApiError(400, f"for 'in', 'notin' operators, values set can't be empty: {key}")
            preds.append(lambda lb, k=key, vs=values, inside=m["setop"] == "in": (lb.get(k) in vs) == inside)
        elif op:
            preds.append(lambda lb, k=key, v=val, eq=op != "!=": (lb.get(k) == v) == eq)
        else:
            preds.append(lambda lb, k=key, present=not m["neg"]: (k in lb) == present)
    return lambda labels: all(p(labels or {}) for p in preds)


# --------------------------------------------------------------------------- patches

def merge_patch(target, patch, strategic=False):
    """RFC 7386 merge patch; ``strategic`` also merges the known lists by their key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # strategic-merge directives are not emulated
        if value is None:
            result.pop(key, None)
        elif strategic and key in _MERGE_KEYS and isinstance(value, list) and isinstance(result.get(key), list):
            mk = _MERGE_KEYS[key]
            merged = {item.get(mk): item for item in result[key]}
            for item in value:
                merged[item.get(mk)] = merge_patch(merged.get(item.get(mk), {}), item, True)
            result[key] = list(merged.values())
        else:
            result[key] = merge_patch(result.get(key), value, strategic)
    return result


# --------------------------------------------------------------------------- the store

class KubeStore:
    """Thread-safe objects keyed by (plural, namespace, name), and pod logs. Reads return copies.

    Deletion is as asynchronous as on a real cluster: the garbage collector removes the dependents
    of a deleted Job ``gc_delay`` seconds later, and a pod on a node passes through terminating
    (``deletionTimestamp`` set) for ``grace`` seconds before it is gone."""

    def __init__(self, gc_delay=0.05, grace=0.1):
        self.lock = threading.RLock()
        # objects: kept in key order with each one's JSON, so a list page costs its size (kube_store)
        self.objects, self.logs = ObjectIndex(JOB_NAME_LABELS), {}  # logs: (namespace, pod, container) -> text
        self.gc_delay, self.grace = gc_delay, grace
        self._timers, self.closed = [], False
        self.config_waits = {}  # (namespace, Secret name) -> [(Job name, uid, held mark)], kube_kubelet

    def get(self, plural, namespace, name):
        with self.lock:
            return copy.deepcopy(self.objects.get((plural, namespace, name)))

    def put(self, plural, obj):
        """Insert or overwrite with a new resourceVersion; returns a copy of what is stored."""
        with self.lock:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.objects.next_rv())
            self.objects[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
            return copy.deepcopy(obj)

    def resource_version(self):
        """The store's revision: grows with every write and removal, as etcd's does."""
        with self.lock:
            return str(self.objects.revision)

    def list(self, plural, namespace=None, label_selector=None, after=None):
        """Matching objects in (namespace, name) order; ``after`` = (namespace, name) starts past that key."""
        labels_ok = parse_label_selector(label_selector)
        with self.lock:
            return [copy.deepcopy(o) for o in self.objects.matching(plural, namespace, labels_ok, after)]

    def page(self, plural, namespace=None, label_selector=None, after=None, limit=0):
        """One list page as encoded items: (items, key of the last one if more match, else None)."""
        labels_ok = parse_label_selector(label_selector)
        with self.lock:
            return self.objects.page(plural, namespace, labels_ok, after, limit)

    def count(self, plural, namespace=None, label_selector=None):
        labels_ok = parse_label_selector(label_selector)
        with self.lock:
            return sum(1 for _ in self.objects.matching(plural, namespace, labels_ok))

    def pods_of_job(self, job):
        """Pods owned by the Job (ownerReferences uid) or carrying its job-name label."""
        with self.lock:
            return self.objects.pods_of_job(job["metadata"])

    # asynchrony: the garbage collector and the kubelet act a little later, on a timer thread
    def later(self, delay, fn, *args):
        def run():
            with self.lock:
                if not self.closed:
                    fn(*args)
        with self.lock:
            if self.closed:
                return
            timer = threading.Timer(delay, run)
            timer.daemon = True
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            timer.start()

    def close(self):
        with self.lock:
            self.closed = True
            for timer in self._timers:
                timer.cancel()

    def delete(self, plural, namespace, name, propagation=None):
        """Delete as the API server + garbage collector + kubelet do; returns the object as deleted.

        Jobs: ``Background`` removes the Job now and its pods (and owned Secrets) later;
        ``Foreground`` keeps the Job with ``deletionTimestamp`` and the ``foregroundDeletion``
        finalizer until its pods are gone; ``Orphan`` (the default for batch/v1 Jobs) leaves the pods.
        Pods on a node terminate first (``deletionTimestamp``), unscheduled pods go at once."""
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                raise not_found(plural, name)
            if plural == "pods":
                return self._delete_pod(obj)
            if plural != "jobs":
                return self._remove(plural, obj)
            if propagation == "Foreground":
                if not obj["metadata"].get("deletionTimestamp"):
                    obj["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0,
                                           finalizers=["foregroundDeletion", *obj["metadata"].get("finalizers", [])])
                    obj = self.put("jobs", obj)
                    self.later(self.gc_delay, self._collect_job, copy.deepcopy(obj), "Foreground")
                return copy.deepcopy(obj)
            self._remove("jobs", obj)
            if propagation == "Background":
                self.later(self.gc_delay, self._collect_job, copy.deepcopy(obj), "Background")
            else:
                self._collect_job(obj, "Orphan")
            return obj

    def _remove(self, plural, obj):
        meta = obj["metadata"]
        self.objects.pop((plural, meta["namespace"], meta["name"]), None)
        if plural == "pods":
            for key in [k for k in self.logs if k[:2] == (meta["namespace"], meta["name"])]:
                del self.logs[key]
        return obj

    def _delete_pod(self, pod):
        if not pod["spec"].get("nodeName"):
            return self._remove("pods", pod)
        if not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=30)
            pod = self.put("pods", pod)
            self.later(self.grace, self._kubelet_confirms, pod["metadata"]["namespace"], pod["metadata"]["name"],
                       pod["metadata"]["uid"])
        return copy.deepcopy(pod)

    def _kubelet_confirms(self, namespace, name, uid):
        pod = self.objects.get(("pods", namespace, name))
        if pod is not None and pod["metadata"]["uid"] == uid:
            self._remove("pods", pod)
            self._finish_foreground(namespace)

    def _collect_job(self, job, propagation):
        """The garbage collector's pass over the dependents of a deleted (or deleting) Job."""
        for pod in self.pods_of_job(job):
            if propagation == "Orphan":
                pod["metadata"].pop("ownerReferences", None)
                self.put("pods", pod)
            else:
                self._delete_pod(pod)
        self._collect_owned("secrets", job, propagation)
        self._finish_foreground(job["metadata"]["namespace"])

    def _finish_foreground(self, namespace):
        """A Job deleted in the foreground goes once no pod of it is left."""
        for job in self.objects.foreground_jobs(namespace):
            if not self.pods_of_job(job):
                self._remove("jobs", job)
                self._collect_owned("secrets", job, "Background")

    def _collect_owned(self, plural, owner, propagation):
        """A dependent whose owners are all gone is deleted (orphaned on Orphan)."""
        uid = owner["metadata"]["uid"]
        for dependent in map(copy.deepcopy, self.objects.owned_by(plural, owner["metadata"]["namespace"], uid)):
            refs = dependent["metadata"].get("ownerReferences") or []
            rest = [ref for ref in refs if ref.get("uid") != uid]
            live = [ref for ref in rest if self.objects.has_uid(ref.get("uid"))]
            if propagation in ("Background", "Foreground") and not live:
                self._remove(plural, dependent)
            else:
                dependent["metadata"]["ownerReferences"] = rest
                if not rest:
                    dependent["metadata"].pop("ownerReferences")
                self.put(plural, dependent)


# --------------------------------------------------------------------------- validation & defaults

def _label_problems(labels, field):
    problems = []
    for key, value in (labels or {}).items():
        prefix, _, label_name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) \
                or len(label_name) > 63 or not _LABEL_NAME.match(label_name):
            problems.append((field, f"Invalid value: {key!r}: invalid label key"))
        if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.match(value)):
            problems.append((field, f"Invalid value: {value!r}: a valid label must be 63 characters or less "
                                    "and consist of alphanumerics, '-', '_' or '.'"))
    return problems


def validate(plural, obj):
    """The subset of API-server validation a launcher can trip over; raises 422 Invalid."""
    name, spec = obj["metadata"].get("name", ""), obj.get("spec", {})
    pattern, limit = (_DNS_LABEL, 63) if plural == "jobs" else (_DNS_SUBDOMAIN, 253)
    causes = [] if pattern.match(name) and len(name) <= limit else [
        ("metadata.name", f"Invalid value: {name!r}: must be a lowercase RFC 1123 name of at most {limit} chars")]
    causes += _label_problems(obj["metadata"].get("labels"), "metadata.labels")
    if plural == "secrets":
        causes += _secret_problems(obj)
        _raise_invalid(plural, name, causes)
        return
    pod_spec = spec.get("template", {}).get("spec", {}) if plural == "jobs" else spec
    if plural == "jobs":
        causes += _label_problems(spec.get("template", {}).get("metadata", {}).get("labels"),
                                  "spec.template.metadata.labels")
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            causes.append(("spec.template.spec.restartPolicy", f"Unsupported value: "
                           f"{pod_spec.get('restartPolicy')!r}: supported values: \"OnFailure\", \"Never\""))
    if not pod_spec.get("containers"):
        causes.append(("spec.containers", "Required value"))
    causes += [(f"spec.containers[{i}].image", "Required value")
               for i, c in enumerate(pod_spec.get("containers") or []) if not c.get("image")]
    _raise_invalid(plural, name, causes)


def _secret_problems(obj):
    problems = []
    for key, value in (obj.get("data") or {}).items():
        if not re.fullmatch(r"[-._a-zA-Z0-9]+", key) or len(key) > 253:
            problems.append((f"data[{key}]", "Invalid value: a valid config key must consist of alphanumeric "
                                             "characters, '-', '_' or '.'"))
        try:
            base64.b64decode(value, validate=True)
        except (TypeError, ValueError):
            problems.append((f"data[{key}]", "Invalid value: illegal base64 data"))
    return problems


def _raise_invalid(plural, name, causes):
    if causes:
        group, _, kind, _ = RESOURCES[plural]
        raise ApiError(422, f'{kind}.{group or "core"} "{name}" is invalid: ' + "; ".join(
            f"{f}: {m}" for f, m in causes), "Invalid", {"name": name, "group": group, "kind": kind, "causes": [
                {"field": f, "message": m, "reason": "FieldValueInvalid"} for f, m in causes]})


def apply_defaults(plural, obj, namespace):
    """What the API server fills in on create (metadata, Job spec defaults, Job selector labels)."""
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
    group, version, kind, _ = RESOURCES[plural]
    obj["apiVersion"], obj["kind"] = f"{group}/{version}" if group else version, kind
    if plural == "secrets":  # no spec, no status; stringData is write-only, merged into data
        obj.setdefault("type", "Opaque")
        data = obj.setdefault("data", {})
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        return obj
    spec = obj.setdefault("spec", {})
    if plural == "jobs":
        for key, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6), ("suspend", False),
                           ("completionMode", "NonIndexed"), ("podReplacementPolicy", "TerminatingOrFailed")):
            spec.setdefault(key, value)
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}})
        tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), "controller-uid": meta["uid"],
                           "batch.kubernetes.io/controller-uid": meta["uid"],
                           **{k: meta["name"] for k in JOB_NAME_LABELS}}
        obj["status"] = {}
    else:
        spec.setdefault("restartPolicy", "Always")
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    return obj


# --------------------------------------------------------------------------- HTTP server

def _api_resources(plural, group_version):
    kind = RESOURCES[plural][2]
    res = [{"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
           {"name": f"{plural}/status", "singularName": "", "namespaced": True, "kind": kind,
            "verbs": ["get", "patch", "update"]}]
    if plural == "pods":
        res.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
        res.append({"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": res}


_BATCH_GROUP = {"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}
_STATIC = {
    "/version": SERVER_VERSION,
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_BATCH_GROUP]},
    "/apis/batch": {"kind": "APIGroup", "apiVersion": "v1", **_BATCH_GROUP},
    "/api/v1": _api_resources("pods", "v1"),
    "/apis/batch/v1": _api_resources("jobs", "batch/v1"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 pools connections
    cluster = None  # set on a per-cluster subclass

    def log_message(self, *args):
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, not in the accepting thread: a stuck client blocks no one
        super().setup()  # headers and body are separate writes: avoid the 40 ms delayed-ACK stall
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, code, body, headers=None):
        text = isinstance(body, str)  # bytes: JSON encoded already (a list page, kube_store.list_body)
        data = body if isinstance(body, bytes) else body.encode() if text else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self):
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", dict(parse_qsl(url.query, keep_blank_values=True))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cluster = self.cluster
        cluster.requests.append((self.command, path, query))
        fault = cluster._take_fault(self.command, path)
        if fault is not None:
            code, body = fault
            body = status_body(code, _REASONS.get(code, "Unknown"), f"injected failure ({code})") \
                if body is None else body
            return self._send(code, body, {"Retry-After": "1"} if code in (429, 503) else None)
        try:
            cluster._caller.user = cluster._authenticate(self.headers)
        except ApiError as exc:
            return self._send(exc.code, exc.body())
        try:
            body = json.loads(raw) if raw else None
            code, payload = cluster._route(self.command, path, query, body, self.headers.get("Content-Type", ""))
        except ValueError as exc:
            code, payload = 400, status_body(400, "BadRequest", f"invalid request: {exc}")
        except ApiError as exc:
            code, payload = exc.code, exc.body()
        except Exception as exc:  # an emulator bug must surface as a 500, not a hung client
            code, payload = 500, status_body(500, "InternalError", f"emulator error: {exc!r}")
        if isinstance(payload, WatchStream):
            return payload.serve(self)  # streams on this thread until timeoutSeconds (kube_watch)
        self._send(code, payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog the API server has (Go's net.Listen takes the system's somaxconn), not
    # socketserver's 5: a client opening a few connections at once (a worker's launch threads) must
    # not have its handshakes dropped and retried a second later.
    request_queue_size = socket.SOMAXCONN
    block_on_close = False  # idle keep-alive connections must not block shutdown

    def handle_error(self, request, client_address):
        pass  # a client refusing our certificate, or hanging up, is the client's business


class KubeCluster:
    """Context manager: the emulated API server on 127.0.0.1 in a background thread."""

    def __init__(self, token="emulator-token", *, version="1.30", sidecars=(), tls=False, gc_delay=0.05,
                 grace=0.1):
        self.token = token  # the admin's bearer token (None: no authentication, everyone is admin)
        self.version = tuple(int(part) for part in version.split(".")[:2])  # Job conditions differ by version
        self.sidecars = tuple(sidecars)  # containers a mutating webhook adds to every pod (e.g. istio-proxy)
        self.tls, self.ca_file, self._tls_dir = tls, None, None
        self.store = KubeStore(gc_delay=gc_delay, grace=grace)
        self.rbac, self.users = Rbac(), {}  # token -> username; those users are limited by RBAC
        self.requests = []  # (method, path, query dict), in arrival order, injected failures included
        self.url = None
        self._faults, self._faults_lock, self._clients = [], threading.Lock(), []
        self._server = self._thread = None
        self._caller = threading.local()
        self._continue_epoch, self._expire_after_pages = 0, None
        self.bookmark_interval = 60.0  # a real server sends a watch BOOKMARK about once a minute

    def start(self):
        self._server = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), {"cluster": self}))
        scheme = "http"
        if self.tls:
            self._tls_dir = tempfile.TemporaryDirectory(prefix="kube-emulator-tls-")
            self.ca_file, cert, key = make_server_certificate(Path(self._tls_dir.name))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                        name="kube-emulator")
        self._thread.start()
        return self

    def stop(self):
        for api_client in self._clients:
            api_client.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        self.store.close()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # client side
    def configuration(self):
        config = kubernetes.client.Configuration()
        config.host = self.url
        if self.token:
            config.api_key, config.api_key_prefix = {"authorization": self.token}, {"authorization": "Bearer"}
        if self.ca_file:
            config.ssl_ca_cert = self.ca_file
        return config

    def api_client(self, token=None):
        """A ``kubernetes.client.ApiClient`` for this cluster (as the admin, or the user of ``token``),
        closed when the cluster stops."""
        config = self.configuration()
        if token:
            config.api_key = {"authorization": token}
        self._clients.append(kubernetes.client.ApiClient(config))
        return self._clients[-1]

    # authentication and authorisation
    def bind_rbac(self, manifest, namespace="default", token=None):
        """Apply the Roles/RoleBindings of ``manifest`` (e.g. deploy/rbac.yaml) in ``namespace`` and give
        the bound service account a bearer token; returns the token. Its requests are then refused
        (403) unless a bound Role grants their verb on their resource in their namespace."""
        users = self.rbac.apply(manifest, namespace)
        token = token or f"sa-token-{secrets.token_hex(8)}"
        self.users[token] = users[0]
        return token

    def _authenticate(self, headers):
        """The username of a request: the admin's token (or no token configured) is the admin, who may
        act as another user with ``Impersonate-User``; a bound token is its service account."""
        auth = headers.get("Authorization") or ""
        presented = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        impersonate = headers.get("Impersonate-User")
        if self.token is None or presented == self.token:
            return impersonate or ADMIN
        user = self.users.get(presented)
        if user is None:
            raise ApiError(401, "Unauthorized")
        if impersonate:
            raise ApiError(403, f'users "{impersonate}" is forbidden: User "{user}" cannot impersonate resource '
                                f'"users" in API group "" at the cluster scope', "Forbidden",
                           {"name": impersonate, "kind": "users"})
        return user

    def _authorize(self, method, plural, ns, name, sub, query):
        user = getattr(self._caller, "user", ADMIN)
        if user == ADMIN:
            return
        request = rbac_request_for(method, plural, RESOURCES[plural][0], ns, name, sub, query)
        if not self.rbac.allows(user, request):
            details = {"group": request.group, "kind": plural, **({"name": name} if name else {})}
            raise ApiError(403, forbidden_message(user, request), "Forbidden", details)

    # paging: continue tokens, and their expiry (etcd compaction on a real server)
    def expire_continue_tokens(self, after_pages=0):
        """Expire every continue token issued so far, now or after ``after_pages`` more list pages
        are served (compaction in the middle of a client's paging). A client presenting one gets
        410 Gone, reason Expired, as from a real server."""
        with self.store.lock:
            if after_pages:
                self._expire_after_pages = after_pages
            else:
                self._continue_epoch += 1

    # watch history: compaction and broken connections (kube_watch)
    def compact_watch_history(self):
        """Forget every change so far: a watch from an older resourceVersion gets 410 Expired."""
        with self.store.lock:
            self.store.objects.watch_log.compact(self.store.objects.revision)

    def drop_watches(self):
        """Cut every open watch connection mid-stream (no final chunk), as a restarting server would."""
        self.store.objects.watch_log.drop_all()

    def stall_watches(self, *, new: bool = False):
        """Make every open watch connection half-open: it stays up and silent (no bytes, no FIN, no RST);
        with `new`, watch requests made meanwhile get no answer either. `unstall_watches()` ends it."""
        self.store.objects.watch_log.stall_all(new=new)

    def unstall_watches(self):
        self.store.objects.watch_log.unstall()

    def _page_served(self):
        if self._expire_after_pages:
            self._expire_after_pages -= 1
            if not self._expire_after_pages:
                self._expire_after_pages = None
                self._continue_epoch += 1

    def _continue_token(self, key):
        data = {"v": "meta.k8s.io/v1", "rv": int(self.store.resource_version()), "start": list(key),
                "epoch": self._continue_epoch}
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()

    def _continue_from(self, token):
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            key, epoch = tuple(data["start"]), data["epoch"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, f"continue key is not valid: {exc}") from exc
        if epoch != self._continue_epoch:
            raise ApiError(410, _EXPIRED_MESSAGE, "Expired", metadata={"continue": self._continue_token(key)})
        return key

    def write_kubeconfig(self, path, namespace="default"):
        """A kubeconfig for ``kubernetes.config.load_kube_config(path)`` (JSON is valid YAML)."""
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator",
               "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
               "users": [{"name": "emulator", "user": {"token": self.token} if self.token else {}}],
               "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                             "namespace": namespace}}]}
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        return str(path)

    # fault injection and the request log
    def fail_next(self, method, path_regex, status, times=1, body=None):
        """The next ``times`` requests matching METHOD ('*' for any) and ``re.search(path_regex, path)``
        get ``status`` with ``body`` (dict as JSON, str as text; default: a Kubernetes Status)."""
        with self._faults_lock:
            self._faults.append({"method": method.upper(), "path": re.compile(path_regex), "status": status,
                                 "left": times, "body": body})

    def _take_fault(self, method, path):
        with self._faults_lock:
            for fault in self._faults:
                if fault["left"] > 0 and fault["method"] in ("*", method) and fault["path"].search(path):
                    fault["left"] -= 1
                    return fault["status"], fault["body"]
        return None

    def clear_faults(self):
        with self._faults_lock:
            self._faults.clear()

    def requests_matching(self, method, path_regex):
        return [r for r in self.requests if r[0] == method.upper() and re.search(path_regex, r[1])]

    # routing
    def _route(self, method, path, query, body, content_type):
        if path in _STATIC or path == "/":
            if method != "GET":
                raise ApiError(405, f"method {method} not allowed on {path}")
            if path == "/version":
                major, minor = self.version
                return 200, {**SERVER_VERSION, "major": str(major), "minor": str(minor),
                             "gitVersion": f"v{major}.{minor}.0-emulated"}
            return 200, _STATIC.get(path) or {"paths": sorted(_STATIC)}
        m = _PATH.match(path)
        if not m or m["plural"] not in RESOURCES or RESOURCES[m["plural"]][3] != m["prefix"] \
                or m["sub"] not in (None, "status", "log") or (m["sub"] == "log" and m["plural"] != "pods") \
                or (m["name"] and not m["ns"]):
            raise ApiError(404, _NO_RESOURCE)
        if query.get("fieldSelector"):
            raise ApiError(400, "fieldSelector is not emulated")
        plural, ns, name, sub = m["plural"], m["ns"], m["name"], m["sub"]
        self._authorize(method, plural, ns, name, sub, query)
        if query.get("watch") in TRUE:
            if method != "GET" or name is not None:
                raise ApiError(400, "only collection watches are emulated")
            group, version, kind, _ = RESOURCES[plural]
            return 200, WatchStream(self.store, plural, ns, parse_label_selector(query.get("labelSelector")), query,
                                    kind, f"{group}/{version}" if group else version, self.bookmark_interval)
        if name is None:
            return self._collection(method, plural, ns, query, body)
        if sub == "log":
            if method != "GET":
                raise ApiError(405, f"method {method} not allowed on pods/log")
            return 200, self._read_log(ns, name, query)
        return self._item(method, plural, ns, name, sub, query, body, content_type)

    def _collection(self, method, plural, ns, query, body):
        store = self.store
        if method == "GET":
            with store.lock:
                after = self._continue_from(query["continue"]) if query.get("continue") else None
                selector = query.get("labelSelector")
                items, last = store.page(plural, ns, selector, after=after, limit=max(0, int(query.get("limit") or 0)))
                meta = {"resourceVersion": store.resource_version()}
                if last is not None:
                    meta["continue"] = self._continue_token(last)
                    if not selector:  # with a selector a real server cannot know it and leaves it out
                        meta["remainingItemCount"] = store.objects.count_after(plural, ns, last)
                self._page_served()
            return 200, list_body(f"{RESOURCES[plural][2]}List", "/".join(filter(None, RESOURCES[plural][:2])),
                                  meta, items)
        if ns is None:
            raise ApiError(405, f"{method} needs a namespace")
        if method == "POST":
            if (body or {}).get("metadata", {}).get("namespace") not in (None, ns):
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent "
                                    "on the request")
            obj = apply_defaults(plural, copy.deepcopy(body or {}), ns)
            validate(plural, obj)
            with store.lock:
                name = obj["metadata"]["name"]
                if store.get(plural, ns, name) is not None:
                    raise ApiError(409, f'{_full_name(plural)} "{name}" already exists', "AlreadyExists",
                                   {"name": name, "group": RESOURCES[plural][0], "kind": plural})
                if query.get("dryRun") == "All":
                    return 201, obj
                stored = store.put(plural, obj)
                kube_kubelet.created(store, plural, stored)
                return 201, stored
        if method == "DELETE":
            propagation = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
            with store.lock:
                matched = store.list(plural, ns, query.get("labelSelector"))
                for obj in matched:  # each as a single delete: the same propagation, finalizers and grace
                    store.delete(plural, ns, obj["metadata"]["name"], propagation)
                meta = {"resourceVersion": store.resource_version()}
            # A real server answers with the list it matched (as read before deleting), not a Status.
            return 200, list_body(f"{RESOURCES[plural][2]}List", "/".join(filter(None, RESOURCES[plural][:2])),
                                  meta, [json.dumps(obj).encode() for obj in matched])
        raise ApiError(405, f"method {method} not allowed on a collection")

    def _item(self, method, plural, ns, name, sub, query, body, content_type):
        with self.store.lock:
            current = self.store.get(plural, ns, name)
            if current is None:
                raise not_found(plural, name)
            if method == "GET":
                return 200, current
            if method == "DELETE" and sub is None:
                propagation = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
                deleted = self.store.delete(plural, ns, name, propagation)
                if plural == "pods" or deleted["metadata"].get("deletionTimestamp"):
                    return 200, deleted  # still there (terminating, foreground): the object
                return 200, {  # gone at once: a Status
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": RESOURCES[plural][0], "kind": plural, "uid": deleted["metadata"]["uid"]}}
            if method == "PATCH" and "merge-patch" in content_type:
                updated = merge_patch(current, body, strategic="strategic" in content_type)
                return 200, self._save_update(plural, current, updated, status_only=sub == "status")
            if method == "PATCH":  # JSON patch (a list body) and apply-patch are not emulated
                raise ApiError(415, f"the emulator does not support {content_type} patches")
            raise ApiError(405, f"method {method} not emulated (replace is not supported)")

    def _save_update(self, plural, current, updated, status_only):
        """Status-subresource rules: the main resource ignores status, /status ignores everything else."""
        if status_only:
            if "status" not in current:
                raise ApiError(404, _NO_RESOURCE)
            return self.store.put(plural, {**current, "status": updated.get("status", {})})
        result = {**updated, "status": current.get("status", {})} if "status" in current else updated
        meta = result.setdefault("metadata", {})
        meta.update({k: current["metadata"][k] for k in ("uid", "creationTimestamp", "namespace", "name")})
        meta["generation"] = current["metadata"]["generation"] + (result.get("spec") != current.get("spec"))
        if plural == "jobs" and result.get("spec", {}).get("template") != current["spec"]["template"]:
            raise ApiError(422, f'Job.batch "{meta["name"]}" is invalid: spec.template: field is immutable')
        validate(plural, result)
        return self.store.put(plural, result)

    def _read_log(self, ns, name, query):
        pod = self.store.get("pods", ns, name)
        if pod is None:
            raise not_found("pods", name)
        containers = [c["name"] for c in pod["spec"].get("containers", [])]
        container = query.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise ApiError(400, f"a container name must be specified for pod {name}, choose one of: "
                                f"[{' '.join(containers)}]")
        if container not in containers:
            raise ApiError(400, f"container {container} is not valid for pod {name}")
        with self.store.lock:
            text = self.store.logs.get((ns, name, container))
        for cs in pod.get("status", {}).get("containerStatuses", []) if text is None else []:
            waiting = cs.get("state", {}).get("waiting")
            if cs.get("name") == container and waiting:
                raise ApiError(400, f'container "{container}" in pod "{name}" is waiting to start: '
                                    f'{waiting.get("reason", "ContainerCreating")}')
        text = text or ""
        if "tailLines" in query:
            tail = int(query["tailLines"])
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        return text


# --------------------------------------------------------------------------- Job controller

_FAIL_MESSAGES = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
                  "DeadlineExceeded": "Job was active longer than specified deadline"}
_EXIT_CODES = {"OOMKilled": 137, "Error": 1, "Completed": 0, "ContainerCannotRun": 128}
_POD_LEVEL_REASONS = {"Evicted", "DeadlineExceeded"}  # set on pod status, not on a container


def _cond(type_, status, reason=None, message=None):
    cond = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": now_iso()}
    return {**cond, **({"reason": reason} if reason else {}), **({"message": message} if message else {})}


def pod_status(containers, phase, reason=None, container_state=None, message=None):
    """A realistic pod ``status``. ``reason``: Unschedulable, ImagePullBackOff, ErrImagePull,
    CreateContainerConfigError (Pending); CrashLoopBackOff (Running); OOMKilled, Error, Evicted,
    DeadlineExceeded (Failed). ``container_state`` overrides every container's ``state``."""
    ts = now_iso()
    if phase == "Pending" and reason == "Unschedulable":
        return {"phase": "Pending", "qosClass": "Burstable", "conditions": [_cond(
            "PodScheduled", "False", "Unschedulable", message or "0/3 nodes are available: 3 Insufficient cpu. "
            "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.")]}
    status = {"phase": phase, "hostIP": "10.0.0.10", "podIP": "10.244.0.17", "startTime": ts, "qosClass": "Burstable"}
    extra = {"message": message} if message else {}
    if container_state is not None:
        state = container_state
    elif phase == "Pending":
        state = {"waiting": {"reason": reason or "ContainerCreating", **extra}}
    elif phase == "Running" and reason:
        state = {"waiting": {"reason": reason, "message": message or "back-off 10s restarting failed container"}}
    elif phase == "Running":
        state = {"running": {"startedAt": ts}}
    elif phase == "Failed" and reason in _POD_LEVEL_REASONS:
        status.update(reason=reason, message=message or f"Pod was terminated: {reason}")
        state = {"terminated": {"reason": "Error", "exitCode": 143, "startedAt": ts, "finishedAt": ts}}
    else:
        why = reason or ("Completed" if phase == "Succeeded" else "Error")
        state = {"terminated": {"reason": why, "exitCode": _EXIT_CODES.get(why, 1), "startedAt": ts,
                                "finishedAt": ts, **extra}}
    ready = "running" in state
    crash = state.get("waiting", {}).get("reason") == "CrashLoopBackOff"
    status["containerStatuses"] = [{
        "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready, "started": ready,
        "restartCount": 3 if crash else 0, "state": copy.deepcopy(state),
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "startedAt": ts, "finishedAt": ts}}
        if crash else {}} for c in containers]
    not_ready = "PodCompleted" if phase in ("Succeeded", "Failed") else None if ready else "ContainersNotReady"
    status["conditions"] = [_cond("PodScheduled", "True"), _cond("Initialized", "True"),
                            _cond("ContainersReady", str(ready), not_ready), _cond("Ready", str(ready), not_ready)]
    return status


class JobController:
    """Plays the Job controller, kubelet and TTL controller on the emulator's store (no HTTP).

    ``job``/``pod`` arguments take a name, a dict or a client model (V1Job/V1Pod). Returns are dicts.
    Job conditions follow the cluster's version: up to 1.30 the terminal ``Complete``/``Failed`` only;
    from 1.31 ``SuccessCriteriaMet``/``FailureTarget`` first, the terminal condition only once no pod
    of the Job is running or terminating. Pods get the cluster's sidecars after the Job's containers."""

    def __init__(self, cluster, namespace="default", sidecars=None):
        self.store, self.namespace = cluster.store, namespace
        self.version = getattr(cluster, "version", (1, 30))
        self.sidecars = tuple(getattr(cluster, "sidecars", ()) if sidecars is None else sidecars)

    @staticmethod
    def _name(obj):
        return obj if isinstance(obj, str) else obj["metadata"]["name"] if isinstance(obj, dict) \
            else obj.metadata.name

    def _get(self, plural, obj):
        found = self.store.get(plural, self.namespace, self._name(obj))
        if found is None:
            raise KeyError(f"no {plural} {self._name(obj)!r} in namespace {self.namespace!r}")
        return found

    def job(self, job):
        return self._get("jobs", job)

    def pod(self, pod):
        return self._get("pods", pod)

    def jobs(self, label_selector=None):
        return self.store.list("jobs", self.namespace, label_selector)

    def pods(self, job=None, label_selector=None):
        if job is not None and label_selector is None:
            # Through the store's job-name index: copying every pod of the namespace to pick one Job's
            # made marking one Job of 10,000 take seconds under the store's lock (watch latency figure).
            with self.store.lock:
                return [copy.deepcopy(p) for p in self.store.objects.pods_labelled_for(self.namespace, self._name(job))]
        pods = self.store.list("pods", self.namespace, label_selector)
        return pods if job is None else [p for p in pods if p["metadata"]["labels"].get("job-name") == self._name(job)]

    def create_pod_for(self, job, phase="Pending", reason=None, container_state=None, message=None):
        """Create a pod as the Job controller would, with the status the kubelet would report."""
        meta, template = (job := self.job(job))["metadata"], job["spec"]["template"]
        spec = copy.deepcopy(template.get("spec", {}))
        spec["containers"] = spec.get("containers", []) + [  # as Istio's or Linkerd's injector adds them
            {"name": name, "image": f"emulated/{name}:1.0"} for name in self.sidecars]
        if reason != "Unschedulable":
            spec["nodeName"] = "emulated-node-1"
        labels = {**template.get("metadata", {}).get("labels", {}), "controller-uid": meta["uid"],
                  "batch.kubernetes.io/controller-uid": meta["uid"], **{k: meta["name"] for k in JOB_NAME_LABELS}}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        return self.store.put("pods", {"apiVersion": "v1", "kind": "Pod", "spec": spec, "metadata": {
            "name": f"{meta['name']}-{secrets.token_hex(3)[:5]}", "namespace": self.namespace,
            "uid": str(uuid.uuid4()), "creationTimestamp": now_iso(), "generation": 1, "labels": labels,
            "annotations": dict(template.get("metadata", {}).get("annotations", {})), "ownerReferences": [owner]},
            "status": pod_status(spec.get("containers", []), phase, reason, container_state, message)})

    def set_pod_phase(self, pod, phase, reason=None, container_state=None, message=None):
        with self.store.lock:
            pod = self.pod(pod)
            pod["status"] = pod_status(pod["spec"].get("containers", []), phase, reason, container_state, message)
            return self.store.put("pods", pod)

    def set_pod_log(self, pod, text, container=None):
        """The log of ``container`` (default: the pod's first, the step's own container)."""
        with self.store.lock:
            pod = self.pod(pod)
            container = container or pod["spec"]["containers"][0]["name"]
            self.store.logs[(self.namespace, pod["metadata"]["name"], container)] = text

    def set_job_status(self, job, **status):
        """Merge raw fields into the Job's status (escape hatch for odd states)."""
        with self.store.lock:
            job = self.job(job)
            job["status"] = merge_patch(job["status"], status)
            return self.store.put("jobs", job)

    def _finish(self, job, phase, pod_reason, with_pods, status):
        """Move the job's unfinished pods to ``phase`` (create one if it has none in any of the two),
        then set the Job status with the count of its pods in ``phase``."""
        with self.store.lock:
            if with_pods:
                live = [p for p in self.pods(job) if p["status"].get("phase") in ("Pending", "Running", None)]
                for pod in live:
                    self.set_pod_phase(pod, phase, pod_reason)
                if not live and not any(p["status"].get("phase") == phase for p in self.pods(job)):
                    self.create_pod_for(job, phase, pod_reason)
            count = sum(1 for p in self.pods(job) if p["status"].get("phase") == phase) or 1
            current = self.job(job)
            current["status"] = {"startTime": current["status"].get("startTime") or now_iso(), "ready": 0,
                                 "terminating": 0, "uncountedTerminatedPods": {}, **status(count)}
            return self.store.put("jobs", current)

    def mark_running(self, job, with_pods=True):
        held = with_pods and kube_kubelet.hold_until_configured(self, job, lambda: self.mark_running(job))
        if held:
            return held
        return self._finish(job, "Running", None, with_pods, lambda n: {"active": n, "ready": n})

    def mark_succeeded(self, job, with_pods=True):
        held = with_pods and kube_kubelet.hold_until_configured(self, job, lambda: self.mark_succeeded(job))
        if held:
            return held
        message = "Reached expected number of succeeded pods"
        first, terminal = _cond("SuccessCriteriaMet", "True", "CompletionsReached", message), \
            _cond("Complete", "True", "CompletionsReached", message)
        if self.version < (1, 31):
            return self._finish(job, "Succeeded", None, with_pods, lambda n: {
                "succeeded": n, "completionTime": now_iso(), "conditions": [terminal]})
        done = self._finish(job, "Succeeded", None, with_pods, lambda n: {"succeeded": n, "conditions": [first]})
        self._terminal_when_pods_stopped(done, terminal)
        return done

    def mark_failed(self, job, reason="BackoffLimitExceeded", message=None, with_pods=True):
        """Fail the Job. ``DeadlineExceeded`` (activeDeadlineSeconds) deletes its running pods, as the
        controller does; other reasons move them to Failed."""
        if reason != "DeadlineExceeded" and with_pods:  # a deadline fails the Job whether its pods started or not
            held = kube_kubelet.hold_until_configured(self, job, lambda: self.mark_failed(job, reason, message))
            if held:
                return held
        message = message or _FAIL_MESSAGES.get(reason, reason)
        first, terminal = _cond("FailureTarget", "True", reason, message), _cond("Failed", "True", reason, message)
        conditions = [terminal] if self.version < (1, 31) else [first]
        if reason == "DeadlineExceeded":
            failed = self._deadline_exceeded(job, conditions)
        else:
            failed = self._finish(job, "Failed", None, with_pods, lambda n: {"failed": n, "conditions": conditions})
        if self.version >= (1, 31):
            self._terminal_when_pods_stopped(failed, terminal)
        return failed

    def _deadline_exceeded(self, job, conditions):
        with self.store.lock:
            live = [p for p in self.pods(job) if p["status"].get("phase") in ("Pending", "Running", None)
                    and not p["metadata"].get("deletionTimestamp")]
            for pod in live:
                self.store.delete("pods", self.namespace, pod["metadata"]["name"])
            current = self.job(job)
            current["status"] = {"startTime": current["status"].get("startTime") or now_iso(), "active": 0,
                                 "ready": 0, "failed": len(live), "terminating": len(live),
                                 "uncountedTerminatedPods": {}, "conditions": conditions}
            return self.store.put("jobs", current)

    def _terminal_when_pods_stopped(self, job, condition):
        """The 1.31 controller adds the terminal condition once no pod is running or terminating."""
        name = job["metadata"]["name"]

        def check():
            current = self.store.objects.get(("jobs", self.namespace, name))
            if current is None or current["metadata"]["uid"] != job["metadata"]["uid"]:
                return
            if any(p["status"].get("phase") in ("Pending", "Running") or p["metadata"].get("deletionTimestamp")
                   for p in self.store.pods_of_job(current)):
                self.store.later(self.store.gc_delay, check)
                return
            current = copy.deepcopy(current)
            status = current["status"]
            status["conditions"] = status.get("conditions", []) + [{**condition, "lastTransitionTime": now_iso()}]
            status["terminating"] = 0
            if condition["type"] == "Complete":
                status["completionTime"] = now_iso()
            self.store.put("jobs", current)

        self.store.later(self.store.gc_delay, check)

    def delete_job(self, job):
        """Remove the Job (its pods follow, asynchronously), as the TTL-after-finished controller does."""
        return self.store.delete("jobs", self.namespace, self._name(job), "Background")


# --------------------------------------------------------------------------- command line (benchmarks)

def _serve_forever(argv=None):
    """``python -m tests.emulators.kube --port N``: the emulator in a process of its own, so a benchmark's
    measured code does not share the interpreter lock with it. Besides the API it answers a small
    control surface under ``/_emulator/`` standing in for the controllers (no auth, local only):
    ``POST /_emulator/running`` ``{"namespace", "jobs": [manifest, ...]}`` creates Jobs each with one
    Running pod in O(1) per Job; ``GET /_emulator/count?plural=&namespace=&labelSelector=``;
    ``POST /_emulator/reset`` empties the store and the request log; for the chaos suite (R6) seeded
    random faults (``/_emulator/faults``, see ``kube_faults``), ``GET /_emulator/jobs?namespace=`` (each
    Job's name, labels, status, whether it is being deleted), ``GET /_emulator/created`` (the labels of
    every Job ever created, to count duplicates) and ``POST /_emulator/mark`` ``{"namespace", "name",
    "phase": "running"|"succeeded"|"failed", "reason"}`` (the Job controller's part). Prints its URL,
    then serves until SIGTERM/SIGINT."""
    import argparse
    import signal
    import sys
    import time

    from .kube_faults import RandomFaults, faulty_handler

    parser = argparse.ArgumentParser(prog="python -m tests.emulators.kube")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="emulator-token", help="bearer token the API requires ('' for none)")
    args = parser.parse_args(argv)

    class ControlledCluster(KubeCluster):
        def _route(self, method, path, query, body, content_type):
            if not path.startswith("/_emulator/"):
                code, answer = super()._route(method, path, query, body, content_type)
                if method == "POST" and code == 201 and answer.get("kind") == "Job" and query.get("dryRun") != "All":
                    self.created.append(answer["metadata"].get("labels", {}))
                return code, answer
            action = path[len("/_emulator/"):]
            if action == "reset" and method == "POST":
                with self.store.lock:
                    self.store.objects.clear()
                    self.store.logs.clear()
                self.requests.clear()
                return 200, {"reset": True}
            if action == "count" and method == "GET":
                return 200, {"count": self.store.count(query.get("plural", "jobs"), query.get("namespace"),
                                                       query.get("labelSelector"))}
            if action == "running" and method == "POST":
                return 200, {"created": self._create_running(body["namespace"], body["jobs"])}
            if action == "faults":
                if method == "POST":
                    return 200, faults.configure(body or {})
                return 200, faults.clear() if method == "DELETE" else faults.report()
            if action == "jobs" and method == "GET":
                return 200, {"items": [
                    {"name": j["metadata"]["name"], "labels": j["metadata"].get("labels", {}), "status": j["status"],
                     "deleting": bool(j["metadata"].get("deletionTimestamp"))}
                    for j in self.store.list("jobs", query.get("namespace"), query.get("labelSelector"))]}
            if action == "created" and method == "GET":
                return 200, {"items": self.created}
            if action == "mark" and method == "POST":
                controller = JobController(self, body["namespace"])
                try:
                    if body["phase"] == "running":
                        controller.mark_running(body["name"])
                    elif body["phase"] == "succeeded":
                        controller.mark_succeeded(body["name"])
                    else:
                        controller.mark_failed(body["name"], body.get("reason") or "BackoffLimitExceeded")
                except KeyError as exc:  # deleted meanwhile: the caller's view was stale
                    raise ApiError(404, str(exc)) from None
                return 200, {"marked": body["name"]}
            raise ApiError(404, f"no control action {method} {action}")

        created = []  # labels of every Job created through the API, duplicates included

        def _create_running(self, namespace, manifests):
            controller = JobController(self, namespace)
            for manifest in manifests:
                job = apply_defaults("jobs", copy.deepcopy(manifest), namespace)
                job["status"] = {"startTime": now_iso(), "active": 1, "ready": 1}
                self.store.put("jobs", job)
                controller.create_pod_for(job, "Running")
            return len(manifests)

    def already_exists(path, obj):
        match = _PATH.match(path.rstrip("/"))
        plural, name = (match["plural"] if match else "jobs"), obj.get("metadata", {}).get("name", "")
        return 409, ApiError(409, f'{_full_name(plural)} "{name}" already exists', "AlreadyExists",
                             {"name": name, "group": RESOURCES.get(plural, ("",))[0], "kind": plural}).body()

    refusing = []  # seconds to stay closed, set by a "refuse" fault; the loop below acts on it

    def refuse(seconds):
        if not refusing:
            refusing.append(seconds)
            threading.Thread(target=cluster._server.shutdown, daemon=True).start()

    faults = RandomFaults()
    cluster = ControlledCluster(token=args.token or None)
    handler = faulty_handler(type("Handler", (_Handler,), {"cluster": cluster}), faults, refuse, status_body,
                             _REASONS, already_exists)
    cluster._server = _Server(("127.0.0.1", args.port), handler)
    port = cluster._server.server_address[1]
    cluster.url = f"http://127.0.0.1:{port}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(cluster.url, flush=True)
    try:
        while True:
            cluster._server.serve_forever(0.05)
            if not refusing:
                break
            cluster._server.server_close()  # new connections are refused until it listens again
            time.sleep(refusing[0])
            cluster._server = _Server(("127.0.0.1", port), handler)
            refusing.clear()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster._server.server_close()


if __name__ == "__main__":
    _serve_forever()
