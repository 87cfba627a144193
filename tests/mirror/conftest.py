"""Mirror fixtures: the ArangoDB emulator, or a real ArangoDB when ARANGO_URL is set in the environment."""
from __future__ import annotations

import os
import uuid

import pytest
from arango import ArangoClient
from arango.http import DefaultHTTPClient

from mirror import documents as d


class RealArango:
    """A real server: same interface as the emulator minus outages (those tests skip)."""

    def __init__(self, url):
        self.url = url


@pytest.fixture
def arango_server():
    if os.environ.get("ARANGO_URL"):
        yield RealArango(os.environ["ARANGO_URL"])
        return
    from tests.emulators.arango import ArangoEmulator

    with ArangoEmulator(username="mirror", password="mirror-pw") as emulator:
        yield emulator


@pytest.fixture
def mirror(settings, arango_server):
    """Mirror switched on against a fresh database; `.db` reads it back through python-arango."""
    real = isinstance(arango_server, RealArango)
    settings.ARANGO_URL = arango_server.url
    settings.ARANGO_ENABLED = True
    settings.ARANGO_DB = f"mirror_test_{uuid.uuid4().hex[:10]}"
    settings.ARANGO_USER = os.environ.get("ARANGO_USER", "root") if real else "mirror"
    settings.ARANGO_PASSWORD = os.environ.get("ARANGO_PASSWORD", "") if real else "mirror-pw"
    client = ArangoClient(hosts=arango_server.url, http_client=DefaultHTTPClient(retry_attempts=0))
    handle = MirrorHandle(client, settings, arango_server)
    yield handle
    if real:
        system = client.db("_system", username=settings.ARANGO_USER, password=settings.ARANGO_PASSWORD)
        if system.has_database(settings.ARANGO_DB):
            system.delete_database(settings.ARANGO_DB)


class MirrorHandle:
    def __init__(self, client, settings, server):
        self.server = server
        self.db = client.db(settings.ARANGO_DB, username=settings.ARANGO_USER, password=settings.ARANGO_PASSWORD)

    def docs(self, collection: str) -> dict[str, dict]:
        """Documents by key, without ArangoDB's own _id/_rev."""
        cursor = self.db.aql.execute("FOR doc IN @@col RETURN doc", bind_vars={"@col": collection})
        return {doc["_key"]: {k: v for k, v in doc.items() if k not in ("_id", "_rev")} for doc in cursor}

    def snapshot(self) -> dict[str, dict]:
        return {name: self.docs(name) for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS}

    def query(self, aql: str, **bind_vars) -> list:
        return list(self.db.aql.execute(aql, bind_vars=bind_vars))

    def go_down(self):
        if not hasattr(self.server, "go_down"):
            pytest.skip("outages can only be simulated with the emulator")
        self.server.go_down()

    def come_back(self):
        self.server.come_back()
