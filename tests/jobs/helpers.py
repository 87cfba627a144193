"""Helpers shared by the jobs tests."""
from __future__ import annotations

from contextlib import contextmanager

from queues.models import QueueRequest
from queues.signals import step_state_changed


def step_of(queue, key) -> QueueRequest:
    """The step of `queue` with (target, type) == key."""
    return queue.steps.get(target=key[0], type=key[1])


def put(step: QueueRequest, state: str, **fields) -> QueueRequest:
    """Force a step into a state (as if the scheduler and workers had got it there)."""
    QueueRequest.objects.filter(pk=step.pk).update(state=state, **fields)
    step.refresh_from_db()
    return step


def on_task(monkeypatch, name: str, handler) -> None:
    """Run `handler(*args)` instead of sending the Celery task `jobs.tasks.<name>`.

    The orchestration announces work with `apply_async` (jobs/announce.py: argsrepr, eta), so
    that is what is intercepted; patching `.delay` would silently intercept nothing.
    """
    monkeypatch.setattr(f"jobs.tasks.{name}.apply_async", lambda args=(), kwargs=None, **options: handler(*args))


def broker_task_names_since(client, before: int) -> list[str]:
    """Names of the tasks pushed to the broker's default queue since it held `before` messages, oldest
    first. The Redis transport LPUSHes: the newest are at the head, older tests' leftovers at the tail."""
    import json

    new = client.lrange("celery", 0, client.llen("celery") - before - 1)
    return [json.loads(raw)["headers"]["task"] for raw in reversed(new)]


@contextmanager
def state_changes():
    """(step pk, previous state, new state) of every `step_state_changed` sent while inside, in order."""
    got: list[tuple[int, str, str]] = []

    def on_change(sender, step, previous, state, **kwargs):
        got.append((step.pk, previous, state))

    step_state_changed.connect(on_change, dispatch_uid="tests.jobs.helpers.state_changes", weak=False)
    try:
        yield got
    finally:
        step_state_changed.disconnect(dispatch_uid="tests.jobs.helpers.state_changes")
