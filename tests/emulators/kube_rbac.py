"""RBAC for the Kubernetes emulator: Roles and RoleBindings read from a manifest (deploy/rbac.yaml).

A request is authorised the way the API server's RBAC authoriser does it: the request's verb
(get/list/watch/create/update/patch/delete/deletecollection), API group, resource (with
"/subresource") and namespace must be granted by a rule of a Role bound to the user in that
namespace. Refusals are 403 Forbidden with the server's Status message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The paths any authenticated user may read (system:discovery, system:public-info-viewer).
DISCOVERY = ("/version", "/api", "/apis", "/openapi")


@dataclass
class Request:
    verb: str
    group: str
    resource: str  # "pods" or "pods/log"
    namespace: str | None
    name: str | None


@dataclass
class Rbac:
    roles: dict = field(default_factory=dict)  # (namespace, role name) -> rules
    bindings: dict = field(default_factory=dict)  # (namespace, username) -> [role names]

    def apply(self, manifest: str | Path, namespace: str) -> list[str]:
        """Apply the Roles and RoleBindings of a multi-document manifest into `namespace`, as
        `kubectl -n <namespace> apply -f` would; returns the usernames of the subjects bound."""
        users = []
        for doc in yaml.safe_load_all(Path(manifest).read_text()):
            if not doc:
                continue
            ns = doc.get("metadata", {}).get("namespace") or namespace
            if doc["kind"] == "Role":
                self.roles[(ns, doc["metadata"]["name"])] = doc.get("rules") or []
            elif doc["kind"] == "RoleBinding":
                role = doc["roleRef"]["name"]
                for subject in doc.get("subjects") or []:
                    user = username(subject, ns)
                    self.bindings.setdefault((ns, user), []).append(role)
                    users.append(user)
        return users

    def allows(self, user: str, request: Request) -> bool:
        if request.namespace is None:  # cluster scope needs a ClusterRole: none is emulated
            return False
        for role in self.bindings.get((request.namespace, user), []):
            for rule in self.roles.get((request.namespace, role), []):
                if _matches(rule, request):
                    return True
        return False


def username(subject: dict, namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f"system:serviceaccount:{subject.get('namespace') or namespace}:{subject['name']}"
    return subject["name"]


def _matches(rule: dict, request: Request) -> bool:
    def has(key, value):
        values = rule.get(key) or []
        return "*" in values or value in values

    names = rule.get("resourceNames") or []
    return (has("verbs", request.verb) and has("apiGroups", request.group) and has("resources", request.resource)
            and (not names or request.name in names))


def request_for(method: str, plural: str, group: str, namespace: str | None, name: str | None,
                sub: str | None, query: dict) -> Request:
    if method == "GET":
        verb = "get" if name else "watch" if query.get("watch") in ("1", "t", "T", "true", "TRUE", "True") else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or (
            "delete" if name else "deletecollection")
    return Request(verb, group, f"{plural}/{sub}" if sub else plural, namespace, name)


def forbidden_message(user: str, request: Request) -> str:
    group = request.group
    plural = request.resource.split("/")[0]
    full = f"{plural}.{group}" if group else plural
    subject = f'{full} "{request.name}"' if request.name else full
    where = f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    return (f'{subject} is forbidden: User "{user}" cannot {request.verb} resource "{request.resource}" '
            f'in API group "{group}" {where}')
