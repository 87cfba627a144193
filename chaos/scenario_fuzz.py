"""R4 — API fuzzing over HTTP: property-based requests from the OpenAPI schema against gunicorn.

Schemathesis reads the running server's own schema (`/api/schema/`, which needs a login) and
generates requests, valid and invalid, for every operation; they are sent over HTTP to the
harness's gunicorn, once with the operator's token (a superuser) and once without credentials.
Each request is also sent again with its path naming a queue and step that exist (else it would
mostly meet 404s). Violations: any status ≥ 500 or no answer at all; for anonymous callers any
status but 401/403 on an operation that can be routed, or a body that names the existing queue.
Seeded (hypothesis' seed is the run's) and bounded (examples per operation).
"""
from __future__ import annotations

import time
from collections import Counter

from chaos import targets
from chaos.common import Result, Run, finish
from chaos.harness import Layout, say
from chaos.invariants import Ledger

FULL_EXAMPLES = 60  # per operation, with the superuser's token
FULL_ANONYMOUS = 15  # per operation, without credentials
SCHEMA = "/api/schema/?format=json"


def run(r: Run, *, examples: int | None = None, anonymous: int | None = None) -> Result:
    started = time.monotonic()
    examples = examples or r.n(FULL_EXAMPLES, 3)
    anonymous = anonymous or r.n(FULL_ANONYMOUS, 2)
    system = r.system("R4", Layout(workers=0, beats=0, control=0, events=0, web_workers=2))
    result = Result("R4", r.seed)
    with system:
        status, body = system.api("POST", targets.API_QUEUES, {**targets.template_payload("historical-pipeline"),
                                                                "queue_id": f"r4-{r.seed}"})
        if status != 201:
            result.violations.append(f"setup: POST {targets.API_QUEUES} answered {status}: {str(body)[:200]}")
            return finish(result, system, Ledger(), started)
        existing = {"queue_id": body["queue_id"], "name": body["steps"][0]["name"]}
        fuzzer = Fuzzer(system.base_url, system.token, existing, r.seed)
        operations = fuzzer.operations()
        result.load = (f"{len(operations)} operations x ({examples} authenticated + {anonymous} anonymous) "
                       f"generated requests, each also on an existing queue")
        for operation in operations:
            fuzzer.fuzz(operation, examples, authenticated=True)
            fuzzer.fuzz(operation, anonymous, authenticated=False)
        say(f"R4: {fuzzer.sent} requests; statuses {dict(sorted(fuzzer.statuses.items()))}")
        result.faults = [f"{fuzzer.sent} generated requests", f"statuses {dict(sorted(fuzzer.statuses.items()))}"]
        result.violations += fuzzer.violations[:50]
        if len(fuzzer.violations) > 50:
            result.violations.append(f"… and {len(fuzzer.violations) - 50} more")
        # The queues the fuzzer created were never launched (no worker runs): only their states are checked.
        return finish(result, system, Ledger(), started)


class Fuzzer:
    def __init__(self, base_url: str, token: str, existing: dict[str, str], seed: int):
        self.base_url, self.token, self.existing, self.seed = base_url, token, existing, seed
        self.statuses: Counter = Counter()
        self.violations: list[str] = []
        self.sent = 0

    def operations(self) -> list:
        import schemathesis

        config = schemathesis.config.SchemathesisConfig()
        config.projects.default.generation.update(deterministic=False)
        schema = schemathesis.openapi.from_url(self.base_url + SCHEMA, config=config, wait_for_schema=30,
                                               headers={"Authorization": f"Token {self.token}"})
        return [result.ok() for result in schema.get_all_operations()]

    def fuzz(self, operation, examples: int, *, authenticated: bool) -> None:
        from hypothesis import HealthCheck, Phase, given, seed, settings

        @seed(self.seed)
        @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def send(case) -> None:
            self._send(case, authenticated)
            if case.path_parameters and "queue_id" in case.path_parameters:
                case.path_parameters = {k: self.existing.get(k, v) for k, v in case.path_parameters.items()}
                self._send(case, authenticated)

        send()

    def _send(self, case, authenticated: bool) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "cookie")}
        case.headers = headers
        if authenticated:
            headers = {**headers, "Authorization": f"Token {self.token}"}
        label = f"{'operator' if authenticated else 'anonymous'} {case.method} {case.formatted_path}"
        self.sent += 1
        try:
            response = case.call(base_url=self.base_url, headers=headers, timeout=60)
        except Exception as exc:  # noqa: BLE001 - no answer at all is a finding like a 500
            self.statuses["no answer"] += 1
            self.violations.append(f"{label}: no answer ({type(exc).__name__}: {str(exc)[:200]})")
            return
        status = response.status_code
        self.statuses[status] += 1
        if status >= 500:
            self.violations.append(f"{label}: {status} {response.text[:300]!r}")
        elif not authenticated:
            if status == 404 and _unroutable(case.path_parameters or {}):
                pass
            elif status not in (401, 403):
                self.violations.append(f"{label}: anonymous answered {status} {response.text[:200]!r}")
            if self.existing["queue_id"] in response.text:
                self.violations.append(f"{label}: anonymous answer names the existing queue")


def _unroutable(path_parameters: dict) -> bool:
    """A path no route matches (a 404 before any view, so before authentication): a parameter that is
    empty or holds `/` (the routes' parameters never do), or `.` (the router's format suffix)."""
    return any(not str(v) or "/" in str(v) or "." in str(v) for v in path_parameters.values())
