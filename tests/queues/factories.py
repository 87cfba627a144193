"""Factories for queue tests: users with given permissions, and queues made through the real service."""
from __future__ import annotations

import contextlib
import copy

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from tests.fixtures import load_example


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-Secret-123!")

    @factory.post_generation
    def perms(self, create, extracted, **kwargs):
        for codename in extracted or []:
            self.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="queues"))


def payload(name: str = "historical-pipeline", **changes) -> dict:
    data = copy.deepcopy(load_example(name))
    data.update(changes)
    return data


def make_queue(name: str = "historical-pipeline", *, user=None, queue_id: str | None = None, source: str = "api",
               first_advance: bool = True, **changes):
    """A queue created through submission.queue_create, as the API and admin do: its ready steps
    `launching`, their launch task sent. `first_advance=False`: as it was before its first advance —
    every step waiting, the queue pending with its change counted — the state a retry leaves, for the
    tests of what an advance (or a stop, a retry) does with it."""
    from unittest import mock

    from jobs.submission import queue_create

    with mock.patch("jobs.submission.advance_held") if not first_advance else contextlib.nullcontext():
        queue, _ = queue_create(payload=payload(name, **changes), queue_id=queue_id, user=user, source=source)
    return queue
