"""The schema is created idempotently; the admin shows the mirror's status."""
import pytest

from mirror import arango
from mirror.sync import mirror_drain
from tests.queues.factories import make_queue

pytestmark = pytest.mark.django_db


def test_it_creates_database_collections_indexes_and_graph_once(mirror):
    arango.connect()
    arango.connect()  # second time: nothing new, nothing fails
    db = mirror.db
    names = {c["name"]: c["type"] for c in db.collections() if not c["system"]}
    assert names == {"queues": "document", "steps": "document", "telemetry": "document",
                     "collections": "document", "queue_steps": "edge", "step_reads": "edge", "step_writes": "edge"}
    step_indexes = [(i["fields"], i["unique"]) for i in db.collection("steps").indexes() if i["type"] == "persistent"]
    assert sorted(step_indexes) == sorted([(f, u) for f, u in arango.INDEXES["steps"]])
    graph = db.graph("lineage").properties()
    assert {e["edge_collection"]: (e["from_vertex_collections"], e["to_vertex_collections"])
            for e in db.graph("lineage").edge_definitions()} == {
        "queue_steps": (["queues"], ["steps"]),
        "step_writes": (["steps"], ["collections"]),
        "step_reads": (["collections"], ["steps"]),
    }
    assert graph["name"] == "lineage"


def test_it_shows_the_mirror_status_in_the_admin(mirror, admin_client):
    make_queue(first_advance=False)  # one change pending: the queue
    page = admin_client.get("/admin/mirror/mirrorstate/").content.decode()
    assert "1 pending" in page and "s ago" in page
    mirror_drain()
    page = admin_client.get("/admin/mirror/mirrorstate/").content.decode()
    assert "0 pending" in page
    assert admin_client.get("/admin/mirror/mirroroutbox/").status_code == 200
    assert admin_client.get("/admin/mirror/mirrorstate/add/").status_code == 403


def test_it_keeps_the_admin_to_staff(mirror, client, operator):
    client.force_login(operator)
    assert client.get("/admin/mirror/mirrorstate/").status_code == 302


class StaleListing:
    """A database handle whose listings were read just before another process created everything."""

    def __init__(self, db):
        self._db = db

    def collections(self):
        return []

    def has_graph(self, name):
        return False

    def collection(self, name):
        collection = self._db.collection(name)
        collection.indexes = lambda: []
        return collection

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_it_counts_a_concurrent_schema_creator_as_success(mirror):
    """Case (issue #13): schema creation races (duplicate name / graph exists) count as success."""
    db = arango.connect()
    arango.ensure_schema(StaleListing(db))  # every create answers "already exists"
    assert {c["name"] for c in db.collections() if not c["system"]} >= {"queues", "steps", "queue_steps"}
    assert db.has_graph("lineage")
