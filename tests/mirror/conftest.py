"""Mirror fixtures: the ArangoDB emulator, or a real ArangoDB when ARANGO_CONTRACT_URL is set.

The mirror always runs as a least-privilege user: `rw` on its own per-test database, no access to
`_system`, exactly as a production deployment should grant it. The database and user are created by
the server's superuser (the emulator's, or root with ARANGO_CONTRACT_ROOT_PASSWORD on a real server).
"""
from __future__ import annotations

import uuid

import pytest

from mirror import documents as d
from mirror import tasks
from tests.emulators.contract import TARGETS, arango_target, grant_user


@pytest.fixture(params=TARGETS)
def arango_server(request):
    """The emulator, or the real server (skipped unless configured); see tests/emulators/contract.py."""
    with arango_target(request.param) as server:
        yield server


@pytest.fixture
def mirror_user(arango_server):
    """A fresh user (name, password) with no rights at all yet."""
    name, password = f"mirror_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    arango_server.admin.create_user(name, password)
    yield name, password
    _back_up(arango_server)
    arango_server.admin.delete_user(name, ignore_missing=True)


def _back_up(server):
    """A test that staged an outage may end with the emulator down: clean up needs it."""
    if server.emulator is not None and not server.emulator.is_up:
        server.emulator.come_back()


def _switch_on(settings, server, user, database):
    settings.ARANGO_URL = server.url
    settings.ARANGO_ENABLED = True
    settings.ARANGO_DB = database
    settings.ARANGO_USER, settings.ARANGO_PASSWORD = user


@pytest.fixture
def mirror(settings, arango_server, mirror_user):
    """Mirror switched on against a fresh database it may only read and write; `.db` reads it back."""
    database = f"mirror_test_{uuid.uuid4().hex[:10]}"
    arango_server.admin.create_database(database)
    grant_user(arango_server.admin, mirror_user[0], database, "rw")
    _switch_on(settings, arango_server, mirror_user, database)
    tasks.drain_started()  # no drain left "queued" by an earlier test: every test's first commit enqueues
    yield MirrorHandle(arango_server, settings)
    _back_up(arango_server)
    arango_server.admin.delete_database(database, ignore_missing=True)


@pytest.fixture
def mirror_without_database(settings, arango_server, mirror_user):
    """Mirror switched on for a database that does not exist yet; the user has no rights anywhere."""
    database = f"mirror_test_{uuid.uuid4().hex[:10]}"
    _switch_on(settings, arango_server, mirror_user, database)
    yield database
    _back_up(arango_server)
    arango_server.admin.delete_database(database, ignore_missing=True)


class MirrorHandle:
    def __init__(self, server, settings):
        self.server = server
        self.db = server.client.db(settings.ARANGO_DB, username=settings.ARANGO_USER,
                                   password=settings.ARANGO_PASSWORD)

    def docs(self, collection: str) -> dict[str, dict]:
        """Documents by key, without ArangoDB's own _id/_rev."""
        cursor = self.db.aql.execute("FOR doc IN @@col RETURN doc", bind_vars={"@col": collection})
        return {doc["_key"]: {k: v for k, v in doc.items() if k not in ("_id", "_rev")} for doc in cursor}

    def snapshot(self) -> dict[str, dict]:
        return {name: self.docs(name) for name in d.VERTEX_COLLECTIONS + d.EDGE_COLLECTIONS}

    def query(self, aql: str, **bind_vars) -> list:
        return list(self.db.aql.execute(aql, bind_vars=bind_vars))

    @property
    def emulator(self):
        if self.server.emulator is None:
            pytest.skip("needs the emulator (outages and request hooks cannot be staged on a real server)")
        return self.server.emulator

    def go_down(self):
        self.emulator.go_down()

    def come_back(self):
        self.emulator.come_back()
