"""The two targets of the ArangoDB contract suite: the emulator, or a real server (opt-in).

A real server is used only when ARANGO_CONTRACT_URL and ARANGO_CONTRACT_ROOT_PASSWORD are set; these
names are the suite's own, never the product's ARANGO_URL/ARANGO_USER/ARANGO_PASSWORD, so a
developer's `.env` can never point the tests at a real mirror. The superuser (root) only sets up:
per-test databases and restricted users; the assertions run as the restricted user.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import pytest
from arango import ArangoClient
from arango.http import DefaultHTTPClient

from .arango import ArangoEmulator

TARGETS = ["emulator", "real"]
EMULATOR_ROOT_PASSWORD = "emulator-root-pw"
REAL_SKIP_REASON = "real ArangoDB: set ARANGO_CONTRACT_URL and ARANGO_CONTRACT_ROOT_PASSWORD to run"


@dataclass
class Target:
    url: str
    client: ArangoClient
    admin: object  # python-arango StandardDatabase: root on _system
    emulator: ArangoEmulator | None  # None on a real server


def client_for(url: str) -> ArangoClient:
    # No urllib3 retries/back-off: an outage must fail fast in tests.
    return ArangoClient(hosts=url, http_client=DefaultHTTPClient(retry_attempts=0), resolver_max_tries=1)


@contextlib.contextmanager
def arango_target(param: str):
    if param == "emulator":
        with ArangoEmulator(username="root", password=EMULATOR_ROOT_PASSWORD) as emulator:
            client = client_for(emulator.url)
            yield Target(emulator.url, client, client.db("_system", username="root",
                                                         password=EMULATOR_ROOT_PASSWORD), emulator)
        return
    url, root_password = os.environ.get("ARANGO_CONTRACT_URL"), os.environ.get("ARANGO_CONTRACT_ROOT_PASSWORD")
    if not url or root_password is None:
        pytest.skip(REAL_SKIP_REASON)
    client = client_for(url)
    try:
        yield Target(url, client, client.db("_system", username="root", password=root_password), None)
    finally:
        client.close()


def grant_user(admin, user: str, database: str, level: str) -> None:
    """Database access plus the "*" collection default (a real server otherwise keeps collections that
    someone else created out of reach)."""
    admin.update_permission(user, level, database)
    admin.update_permission(user, level, database, collection="*")
