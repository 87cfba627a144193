"""ensure_admin (used by `make run`) and create_api_token."""
from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


def _run(*args, **kwargs) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out, **kwargs)
    return out.getvalue()


def test_it_creates_the_superuser_idempotently_without_printing_the_password(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "boss")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-Pass-42")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "boss@example.test")
    first = _run("ensure_admin")
    second = _run("ensure_admin")
    assert "s3cret-Pass-42" not in first + second
    user = get_user_model().objects.get(username="boss")
    assert user.is_superuser and user.is_staff and user.check_password("s3cret-Pass-42")
    assert user.email == "boss@example.test"
    token = Token.objects.get(user=user)
    assert token.key not in first + second
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "an0ther-Pass-43")
    _run("ensure_admin")
    user.refresh_from_db()
    assert user.check_password("an0ther-Pass-43")
    assert get_user_model().objects.count() == 1 and Token.objects.get(user=user).key == token.key


def test_it_needs_username_and_password(monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "x")
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_USERNAME"):
        _run("ensure_admin")


def test_it_prints_a_working_api_token(operator, client):
    key = _run("create_api_token", "operator").strip()
    assert Token.objects.get(user=operator).key == key
    assert _run("create_api_token", "operator").strip() == key
    rotated = _run("create_api_token", "operator", "--rotate").strip()
    assert rotated != key
    response = client.get("/api/queues/", HTTP_AUTHORIZATION=f"Token {rotated}")
    assert response.status_code == 200
    assert client.get("/api/queues/", HTTP_AUTHORIZATION=f"Token {key}").status_code in (401, 403)


def test_it_refuses_a_token_for_an_unknown_user():
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        _run("create_api_token", "ghost")
