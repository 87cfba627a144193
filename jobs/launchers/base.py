"""The launcher interface: how a step becomes a running workload and how we observe it.

Every launcher (local processes, Kubernetes Jobs) implements `launch / stop / discard / status / logs`.
`launch` is idempotent: called twice for the same step it returns the same workload. Errors say
whether retrying can help (`LaunchError.permanent`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from queues.models import QueueRequest


class LaunchError(Exception):
    """A launcher operation failed; `permanent` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class Phase:
    PENDING = "pending"  # accepted, not running yet (pod scheduling, image pull)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSING = "missing"  # the workload is gone (never created, deleted, TTL-collected)


@dataclass
class Observation:
    """What the launcher sees of one step's workload right now."""

    phase: str
    reason: str = ""  # e.g. ImagePullBackOff, OOMKilled, "exited with code 3"
    exit_code: int | None = None
    details: dict = field(default_factory=dict)


class Launcher(Protocol):
    name: str

    def launch(self, step: QueueRequest) -> dict:
        """Start the step's workload (idempotent) and return a JSON-able handle."""

    def stop(self, step: QueueRequest, *, force: bool) -> None:
        """Ask the workload to stop (graceful), or remove it with everything it runs (force)."""

    def stop_many(self, steps: list[QueueRequest], *, force: bool) -> None:
        """`stop` for several steps at once (a queue's stop), in as few calls as the launcher can."""

    def discard(self, step: QueueRequest) -> None:
        """Remove this run's workload (`step.job_name`) at once, and nothing of any other run."""

    def status(self, step: QueueRequest) -> Observation:
        """Observe the workload now."""

    def logs(self, step: QueueRequest, *, tail_bytes: int) -> str:
        """The tail of the workload's output ('' when there is none)."""

    def manifest(self, step: QueueRequest) -> dict:
        """What would be launched, for previews (no side effects)."""
