"""The Kubernetes API client, built in one place, and what its errors mean.

`api_client_from_settings()` is the only place that turns settings into a `kubernetes.client.ApiClient`:
the launcher (and through it reconcile) and the readiness probe use it, so a probe can never pass with a
configuration the launcher would fail with (another CA, a token that is never refreshed).

`classify()` says what an error means the way a real API server means it:
- TLS/certificate failures (the client reports status 0, or urllib3 an SSLError, possibly wrapped in a
  MaxRetryError) are configuration errors: retrying cannot fix a wrong CA or an http/https mix-up.
- `403 … exceeded quota` is transient: a ResourceQuota frees up when other workloads finish. Any other
  403 is RBAC and permanent.
- 429, 5xx, timeouts, refused or reset connections are transient.
"""
from __future__ import annotations

import ssl
from pathlib import Path

import kubernetes
import urllib3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from kubernetes.client.exceptions import ApiException

IN_CLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
TRANSIENT_STATUS = {429, 500, 502, 503, 504}

TRANSIENT, PERMANENT, CONFIGURATION = "transient", "permanent", "configuration"
# An abrupt close during the handshake is the network (a restarting load balancer), not our CA.
_TLS_NETWORK_HINTS = ("EOF occurred", "UNEXPECTED_EOF", "connection reset", "Connection reset")


def configuration_from_settings() -> kubernetes.client.Configuration:
    """K8S_API_URL (+ K8S_API_TOKEN, K8S_API_CA_CERT) first, then KUBECONFIG, then in-cluster config.

    Kubeconfig exec/OIDC credentials and the in-cluster service-account token (rotated by the kubelet)
    come with the client library's refresh hook, so a long-running worker never holds an expired token.
    """
    config = kubernetes.client.Configuration()
    if settings.K8S_API_URL:
        config.host = settings.K8S_API_URL.rstrip("/")
        if settings.K8S_API_TOKEN:
            config.api_key = {"authorization": settings.K8S_API_TOKEN}
            config.api_key_prefix = {"authorization": "Bearer"}
        if settings.K8S_API_CA_CERT:
            config.ssl_ca_cert = str(settings.K8S_API_CA_CERT)
        elif IN_CLUSTER_CA.exists():
            config.ssl_ca_cert = str(IN_CLUSTER_CA)
    elif settings.KUBECONFIG:
        kubernetes.config.load_kube_config(config_file=str(settings.KUBECONFIG), client_configuration=config)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config, try_refresh_token=True)
        except kubernetes.config.ConfigException as exc:
            raise ImproperlyConfigured(
                "JOB_LAUNCHER=kubernetes needs K8S_API_URL, KUBECONFIG or to run inside a cluster"
            ) from exc
    # The launcher's own loop decides what is worth retrying; urllib3 retrying more would multiply waits.
    config.retries = 1
    return config


class PreparedBody(dict):
    """A request body built of JSON types only (dicts, lists, str, int, bool, None), e.g. a manifest."""


class ApiClient(kubernetes.client.ApiClient):
    """The library's client (auth and its refresh hook, TLS, pool, timeouts, error mapping), except that a
    PreparedBody is sent as built: the generic walk that turns model objects into dicts copies a plain
    manifest field by field, which costs ~2.5x its JSON encoding — on every launch, twice."""

    def sanitize_for_serialization(self, obj):
        if type(obj) is PreparedBody:
            return obj
        return super().sanitize_for_serialization(obj)


def api_client_from_settings() -> ApiClient:
    return ApiClient(configuration_from_settings())


# --------------------------------------------------------------------------- errors


def tls_failure(exc: BaseException) -> str | None:
    """The TLS problem behind `exc` when it is a configuration one (bad CA, wrong scheme), else None."""
    text = None
    if isinstance(exc, ApiException):  # status 0 carries "SSLError\n<detail>" as its reason
        text = str(exc.reason or "") if exc.status == 0 else ""
        if "SSL" not in text:
            return None
    else:
        cause = exc
        for _ in range(5):  # MaxRetryError(reason=SSLError(SSLCertVerificationError(...)))
            if isinstance(cause, (ssl.SSLError, urllib3.exceptions.SSLError)):
                text = str(cause)
                break
            cause = getattr(cause, "reason", None) or cause.__cause__ or cause.__context__
            if not isinstance(cause, BaseException):
                return None
    if text is None or any(hint in text for hint in _TLS_NETWORK_HINTS):
        return None
    return " ".join(text.split())[:300] or "TLS handshake failed"


def status_message(exc: ApiException) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def quota_exceeded(exc: ApiException) -> bool:
    return exc.status == 403 and "exceeded quota" in status_message(exc)


def list_expired(exc: ApiException) -> bool:
    """410 Gone on a paged list: the continue token outlived the server's compaction window."""
    return exc.status == 410


def classify(exc: BaseException) -> str:
    """TRANSIENT, PERMANENT or CONFIGURATION for an error of an API call."""
    if tls_failure(exc):
        return CONFIGURATION
    if isinstance(exc, ApiException):
        if exc.status == 0:  # the client could not even build the request
            return PERMANENT
        if exc.status in TRANSIENT_STATUS or quota_exceeded(exc):
            return TRANSIENT
        return PERMANENT
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return TRANSIENT
    return PERMANENT


def tls_message(detail: str) -> str:
    return (f"TLS failure talking to the Kubernetes API (configuration: check the CA — K8S_API_CA_CERT or "
            f"the kubeconfig — and the URL's scheme): {detail}")
