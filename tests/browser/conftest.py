"""A real browser for the console tests: Playwright driving Debian's chromium (no Playwright browser download).

Without chromium or the playwright package the tests skip with a one-line reason. Every page opened through
the `page` fixture fails its test if the browser logged a console error or an uncaught exception.
"""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip
PASSWORD = "pw-Browser-123!"


@pytest.fixture(scope="session")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make stay synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def console_user(transactional_db, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="browser-operator", password=PASSWORD, is_staff=True)
    codenames = ["view_queue", "start_queue", "stop_queue", "view_queuerequest"]
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="queues", codename__in=codenames))
    return user


@pytest.fixture
def page(browser, live_server, console_user, settings):
    settings.ALLOWED_HOSTS = ["*"]
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.set_default_timeout(20_000)
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", console_user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    yield page
    context.close()
    assert errors == [], "the browser reported errors"
