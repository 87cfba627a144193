"""Per-step-run telemetry credentials (DESIGN §11 "a step can report only its own telemetry").

A credential names one step run — (queue_id, telemetry_id, run) — and carries an HMAC-SHA256 of
that over a server secret, so the manager can check it without storing anything: the same inputs
always give the same credential, which keeps launches idempotent (a re-launch hands the step the
same value). The secret is TELEMETRY_SIGNING_KEY, else SECRET_KEY; either way a salt of its own
keeps these signatures apart from every other use of the key (sessions, password resets…).

The credential is a bearer secret: launchers hand it over out of band (a Kubernetes Secret, a 0600
file), and nothing logs it, returns it from the API or shows it in a manifest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core import signing

from queues.models import QueueRequest

SALT = "streamforge.jobs.step-telemetry-credential"
# Where the credential sits: the key inside the step's Kubernetes Secret, the local file's name.
SECRET_KEY_NAME = "token"
TOKEN_FILE_NAME = "telemetry.token"
# The variables a worker reads it from (a value from a secretKeyRef, or a file path locally).
TOKEN_ENV = "MANAGER_TELEMETRY_TOKEN"
TOKEN_FILE_ENV = "MANAGER_TELEMETRY_TOKEN_FILE"


@dataclass(frozen=True)
class StepCredential:
    """What a valid credential names."""

    queue_id: str
    telemetry_id: str
    run: int


def _signer() -> signing.Signer:
    if settings.TELEMETRY_SIGNING_KEY:
        return signing.Signer(key=settings.TELEMETRY_SIGNING_KEY, salt=SALT, algorithm="sha256", fallback_keys=[])
    # SECRET_KEY_FALLBACKS keep credentials of running steps valid across a SECRET_KEY rotation.
    return signing.Signer(salt=SALT, algorithm="sha256")


def step_credential_issue(*, step: QueueRequest) -> str:
    """The credential of the step's current run."""
    return _signer().sign_object([step.queue.queue_id, step.telemetry_id, int(step.run)])


def step_credential_read(*, token: str) -> StepCredential | None:
    """The step run a credential names, or None if it is not one of ours (constant-time check)."""
    try:
        value = _signer().unsign_object(token)
    except (signing.BadSignature, ValueError, UnicodeError):
        return None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(part, str) for part in value[:2])
        or not isinstance(value[2], int)
        or isinstance(value[2], bool)
    ):
        return None
    return StepCredential(queue_id=value[0], telemetry_id=value[1], run=value[2])


def secret_name(job_name: str) -> str:
    """The Kubernetes Secret holding the credential of the Job `job_name` (one per run, like the Job)."""
    return f"{job_name}-telemetry"


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only, from the moment the file exists.

    The bytes go to a fresh temporary file created with mode 0600 (O_EXCL: never someone else's
    file) and then replace `path` in one rename, so no reader ever sees the data with wider
    permissions nor half written — unlike write-then-chmod.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
