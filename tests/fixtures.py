"""Shared fixtures: users with and without permissions, API clients, the seed payloads."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "queues" / "pipeline_templates"


def load_example(name: str) -> dict:
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text())


@pytest.fixture
def historical_payload() -> dict:
    return copy.deepcopy(load_example("historical-pipeline"))


@pytest.fixture
def realtime_payload() -> dict:
    return copy.deepcopy(load_example("realtime-pipeline"))


def _user(django_user_model, username: str, perms: list[str]):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username=username, password="pw-" + username + "-123!")
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="queues"))
    return user


@pytest.fixture
def operator(django_user_model):
    """A user who may view, start and stop queues."""
    return _user(django_user_model, "operator", ["view_queue", "start_queue", "stop_queue", "view_queuerequest"])


@pytest.fixture
def viewer(django_user_model):
    return _user(django_user_model, "viewer", ["view_queue", "view_queuerequest"])


@pytest.fixture
def api(operator):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(operator)
    return client


@pytest.fixture
def staff_operator(operator):
    """An operator who may also use the admin."""
    operator.is_staff = True
    operator.save()
    return operator


@pytest.fixture
def staff_viewer(viewer):
    viewer.is_staff = True
    viewer.save()
    return viewer
