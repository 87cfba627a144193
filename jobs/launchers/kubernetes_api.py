"""How the Kubernetes launcher talks to the API server: one namespace, one retry policy, raw bodies.

`KubernetesApi` is what the launcher's verbs (jobs/launchers/kubernetes.py) stand on: every call goes
through `_request`, which retries transient trouble (429, 5xx, `403 exceeded quota`, timeouts, refused
connections) with a short backoff and then raises a transient LaunchError for the caller's own retry; a
TLS failure is a configuration error and fails at once (jobs/k8s_client.py classifies). Responses are
read as raw JSON, and listings follow their pages. Any other refusal propagates as the ApiException,
for the caller to say what it was doing (`refused`).
"""
from __future__ import annotations

import json
import logging
import time

import kubernetes
from kubernetes.client.exceptions import ApiException

from jobs import k8s_client
from jobs.launchers.base import LaunchError
from jobs.manifests import manager_selector

logger = logging.getLogger(__name__)

LIST_PAGE = 500
LIST_RESTARTS = 3  # listings restarted after an expired continue token before giving up this pass


class KubernetesApi:
    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        namespace: str,
        attempts: int = 4,
        backoff: float = 0.5,
        max_delay: float = 5.0,
        timeout: tuple[float, float] = (5.0, 30.0),
    ):
        self.api_client = api_client
        self.namespace = namespace
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.attempts, self.backoff, self.max_delay, self.timeout = attempts, backoff, max_delay, timeout

    def _request(self, fn, *args, **kwargs):
        """Call the API, retrying transient failures; non-retryable ApiExceptions propagate as is."""
        kwargs.setdefault("_request_timeout", self.timeout)
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 — classified below; the rest propagates unchanged
                kind = k8s_client.classify(exc)
                if kind == k8s_client.CONFIGURATION:
                    raise LaunchError(k8s_client.tls_message(k8s_client.tls_failure(exc)), permanent=True) from exc
                if kind == k8s_client.PERMANENT:
                    raise
                if isinstance(exc, ApiException):
                    error = f"HTTP {exc.status} {k8s_client.status_message(exc)}"
                    retry_after = _retry_after(exc)
                else:
                    error, retry_after = f"{type(exc).__name__}: {exc}", None
            if attempt == self.attempts:
                raise LaunchError(f"Kubernetes API unavailable after {attempt} attempts: {error}")
            delay = min(max(self.backoff * 2 ** (attempt - 1), retry_after or 0), self.max_delay)
            logger.info("kubernetes API call failed, retrying", extra={"error": error, "delay": delay})
            time.sleep(delay)

    def _json(self, fn, *args, **kwargs) -> dict:
        """Raw JSON of a response: no model round trip, the same dicts for every code path."""
        return json.loads(self._call(fn, *args, **kwargs) or b"{}")

    def _call(self, fn, *args, **kwargs) -> bytes:
        """The raw body of a response, read whole: that hands the connection back to the pool (an
        unread response keeps it, and the next call opens a new one — a TLS handshake per launch)."""
        return self._request(fn, *args, _preload_content=False, **kwargs).data

    def _post(self, path: str, body: dict) -> bytes:
        """Create an object from a body built here, through the client's own `call_api` (auth, TLS,
        timeouts, ApiException mapping: the same errors as the generated create methods). Those
        methods' parameter checks and model walk over the body cost more than the request itself."""
        return self._call(self.api_client.call_api, path, "POST", body=k8s_client.PreparedBody(body),
                          header_params={"Content-Type": "application/json", "Accept": "application/json"},
                          auth_settings=["BearerToken"], _return_http_data_only=True)

    def list_labelled(self, kind: str, selector: str | None = None) -> list[dict]:
        """Every Job or Pod matching `selector` (default: all this manager labelled), following pages."""
        return self.list_labelled_versioned(kind, selector)[0]

    def list_labelled_versioned(self, kind: str, selector: str | None = None) -> tuple[list[dict], str]:
        """`list_labelled` and the list's resourceVersion (its first page's: the snapshot the pages
        continue), from which a watch sees every later change (jobs/k8s_watch.py)."""
        fn = self.batch.list_namespaced_job if kind == "jobs" else self.core.list_namespaced_pod
        items, token, restarts, version = [], None, 0, ""
        while True:
            kwargs = {"label_selector": selector or manager_selector(), "limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            try:
                page = self._json(fn, self.namespace, **kwargs)
            except ApiException as exc:
                if token and k8s_client.list_expired(exc) and restarts < LIST_RESTARTS:
                    # The server compacted past our snapshot: a consistent list starts over, now.
                    logger.info("continue token expired, listing again", extra={"kind": kind})
                    items, token, restarts, version = [], None, restarts + 1, ""
                    continue
                if k8s_client.list_expired(exc):
                    raise LaunchError(f"listing {kind}: continue token expired {restarts + 1} times") from exc
                raise refused(f"listing {kind}", exc) from exc
            items += page.get("items") or []
            version = version or (page.get("metadata") or {}).get("resourceVersion") or ""
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, version

    def _read_job(self, name: str) -> dict | None:
        try:
            return self._json(self.batch.read_namespaced_job, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise refused(f"reading Job {name}", exc) from exc


def refused(doing: str, exc: ApiException) -> LaunchError:
    """A non-retryable API answer (400 bad manifest, 401/403 credentials or RBAC, 404, 409, 422)."""
    return LaunchError(f"Kubernetes refused {doing}: HTTP {exc.status} {k8s_client.status_message(exc)}",
                       permanent=True)


def _retry_after(exc: ApiException) -> float | None:
    try:
        return float((exc.headers or {}).get("Retry-After"))
    except (TypeError, ValueError):
        return None
