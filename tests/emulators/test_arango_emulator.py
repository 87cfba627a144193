"""ArangoDB contract suite: the same assertions against the emulator and, opt-in, a real server.

Run against a real ArangoDB by setting ARANGO_CONTRACT_URL and ARANGO_CONTRACT_ROOT_PASSWORD (see
README, "ArangoDB mirror > Tests"); otherwise the `real` cases are skipped with one line. Each test
gets its own database, created by root; the assertions run as a restricted user with rw on that
database only (ARANGO_CONTRACT_USER / ARANGO_CONTRACT_PASSWORD, random when unset). Tests that need
the emulator's inspection or outage hooks take the `emu` fixture and skip on a real server.
"""
import os
import warnings
import threading
import uuid

import pytest
from arango.exceptions import (
    AQLQueryExecuteError,
    CollectionCreateError,
    CollectionListError,
    DatabaseCreateError,
    DatabaseListError,
    DatabasePropertiesError,
    DocumentDeleteError,
    DocumentInsertError,
    DocumentRevisionError,
    GraphCreateError,
    ServerVersionError,
)

from mirror import arango as mirror_arango

from .contract import TARGETS, arango_target, grant_user


@pytest.fixture(params=TARGETS)
def target(request):
    with arango_target(request.param) as server:
        yield server


@pytest.fixture
def emu(target):
    if target.emulator is None:
        pytest.skip("emulator only: inspects or stages what a real server cannot")
    return target.emulator


@pytest.fixture
def user(target):
    """The restricted user: (name, password), rights granted per test."""
    name = os.environ.get("ARANGO_CONTRACT_USER") or f"contract_{uuid.uuid4().hex[:8]}"
    password = os.environ.get("ARANGO_CONTRACT_PASSWORD") or uuid.uuid4().hex
    target.admin.delete_user(name, ignore_missing=True)  # a previous run that died keeps no rights
    target.admin.create_user(name, password)
    yield name, password
    target.admin.delete_user(name, ignore_missing=True)


@pytest.fixture
def database(target):
    name = f"contract_{uuid.uuid4().hex[:10]}"
    target.admin.create_database(name)
    yield name
    target.admin.delete_database(name, ignore_missing=True)


def connect(target, user, name):
    return target.client.db(name, username=user[0], password=user[1])


@pytest.fixture
def db(target, user, database):
    grant_user(target.admin, user[0], database, "rw")
    return connect(target, user, database)


def test_databases_collections_indexes_and_graph(target, db):
    sys_db = target.admin
    assert sys_db.has_database(db.name) and not sys_db.has_database("other")
    assert sys_db.version().startswith(("3.11", "3.12"))
    assert not db.has_collection("queues")
    queues = db.create_collection("queues")
    db.create_collection("has_step", edge=True)
    assert db.has_collection("queues") and db.collection("has_step").properties()["edge"]
    with pytest.raises(Exception) as info:
        db.create_collection("queues")
    assert info.value.error_code == 1207

    first = queues.add_index({"type": "persistent", "fields": ["status"], "name": "by_status"})
    again = queues.add_index({"type": "persistent", "fields": ["status"]})
    assert first["isNewlyCreated"] and not again["isNewlyCreated"] and first["id"] == again["id"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy = queues.add_persistent_index(["symbol", "time_range"], unique=True)
    assert legacy["new"] and legacy["unique"] and legacy["fields"] == ["symbol", "time_range"]
    assert {tuple(i["fields"]) for i in queues.indexes() if i["type"] in ("primary", "persistent")} == {
        ("_key",), ("status",), ("symbol", "time_range")}

    graph = db.create_graph("lineage", edge_definitions=[
        {"edge_collection": "reads", "from_vertex_collections": ["steps"], "to_vertex_collections": ["datasets"]}])
    assert db.has_graph("lineage") and not db.has_graph("nope")
    assert db.has_collection("steps") and db.has_collection("reads")  # created by the graph
    assert db.graph("lineage").edge_definitions()[0]["edge_collection"] == "reads"
    assert graph.vertex_collections() == ["datasets", "steps"]
    with pytest.raises(GraphCreateError) as info:
        db.create_graph("lineage")
    assert info.value.error_code == 1925


def test_unique_persistent_index_is_enforced(db):
    queues = db.create_collection("queues")
    queues.add_index({"type": "persistent", "fields": ["symbol"], "unique": True})
    queues.insert({"_key": "a", "symbol": "BTC"})
    with pytest.raises(DocumentInsertError) as info:
        queues.insert({"_key": "b", "symbol": "BTC"})
    assert info.value.error_code == 1210 and info.value.http_code == 409
    queues.insert({"_key": "a", "symbol": "BTC", "x": 1}, overwrite_mode="replace")  # same doc: fine


def test_insert_with_each_overwrite_mode(db):
    queues = db.create_collection("queues")
    meta = queues.insert({"_key": "q1", "status": "new", "opts": {"a": 1, "b": 2}})
    assert meta["_id"] == "queues/q1" and meta["_key"] == "q1" and meta["_rev"]

    for kwargs in ({}, {"overwrite_mode": "conflict"}):
        with pytest.raises(DocumentInsertError) as info:
            queues.insert({"_key": "q1", "status": "x"}, **kwargs)
        assert info.value.error_code == 1210 and info.value.http_code == 409

    ignored = queues.insert({"_key": "q1", "status": "ignored"}, overwrite_mode="ignore", return_new=True)
    assert ignored["_rev"] == meta["_rev"] and "new" not in ignored
    assert queues.get("q1")["status"] == "new"

    updated = queues.insert({"_key": "q1", "status": "running", "opts": {"b": 3}}, overwrite_mode="update",
                            return_new=True, return_old=True)
    assert updated["_old_rev"] == meta["_rev"] and updated["_rev"] != meta["_rev"]
    assert updated["new"]["opts"] == {"a": 1, "b": 3}  # mergeObjects defaults to true
    assert updated["old"]["status"] == "new"

    queues.insert({"_key": "q1", "opts": {"c": 1}, "status": None}, overwrite_mode="update",
                  merge=False, keep_none=False)
    doc = queues.get("q1")
    assert doc["opts"] == {"c": 1} and "status" not in doc

    replaced = queues.insert({"_key": "q1", "message": "fresh"}, overwrite_mode="replace", return_new=True)
    assert replaced["new"] == {"_key": "q1", "_id": "queues/q1", "_rev": replaced["_rev"], "message": "fresh"}
    assert queues.get("q1")["message"] == "fresh"
    assert queues.insert({"_key": "q1", "z": 1}, overwrite=True, return_new=True)["new"]["z"] == 1  # = replace

    auto = queues.insert({"status": "auto"})
    assert auto["_key"] and queues.get(auto["_key"])["status"] == "auto"
    with pytest.raises(DocumentInsertError) as info:
        queues.insert({"_key": "bad key/"})
    assert info.value.error_code == 1221


def test_rev_changes_on_every_write_and_is_checked(db):
    queues = db.create_collection("queues")
    revs = {queues.insert({"_key": "q", "n": 0})["_rev"]}
    for n in range(1, 4):
        revs.add(queues.insert({"_key": "q", "n": n}, overwrite_mode="update")["_rev"])
    revs.add(queues.update({"_key": "q", "n": 9})["_rev"])
    revs.add(queues.replace({"_key": "q", "n": 10})["_rev"])
    assert len(revs) == 6 and queues.get("q")["_rev"] in revs
    with pytest.raises(DocumentRevisionError):
        queues.get({"_key": "q", "_rev": "_stale"})
    with pytest.raises(DocumentRevisionError):
        queues.delete({"_key": "q", "_rev": "_stale"})


def test_insert_many_reports_per_document_errors(db):
    queues = db.create_collection("queues")
    queues.insert({"_key": "b", "v": "old"})
    results = queues.insert_many([{"_key": "a"}, {"_key": "b", "v": "new"}, {"_key": "c"}])
    assert [r["_key"] for r in (results[0], results[2])] == ["a", "c"]
    assert isinstance(results[1], DocumentInsertError) and results[1].error_code == 1210
    assert queues.get("b")["v"] == "old"

    results = queues.insert_many([{"_key": "b", "v": "upd"}, {"_key": "d"}], overwrite_mode="update")
    assert all(isinstance(r, dict) for r in results) and results[0]["_old_rev"]
    assert queues.get("b")["v"] == "upd" and queues.count() == 4
    results = queues.insert_many([{"_key": "b"}], overwrite_mode="replace", return_new=True)
    assert results[0]["new"] == {"_key": "b", "_id": "queues/b", "_rev": results[0]["_rev"]}
    assert queues.insert_many([{"_key": "b", "v": 1}], overwrite_mode="ignore")[0]["_rev"] == results[0]["_rev"]
    with pytest.raises(DocumentInsertError):
        queues.insert_many([{"_key": "a"}], raise_on_document_error=True)


def test_import_bulk_on_duplicate_modes(db):
    col = db.create_collection("telemetry")
    col.insert({"_key": "e1", "a": 1, "b": 1})
    docs = [{"_key": "e1", "a": 2}, {"_key": "e2", "a": 3}]

    with pytest.raises(DocumentInsertError) as info:  # halt_on_error=True -> complete=true: all or nothing
        col.import_bulk(docs)
    assert info.value.error_code == 1210 and col.count() == 1

    res = col.import_bulk(docs, halt_on_error=False)
    assert (res["created"], res["errors"], res["updated"]) == (1, 1, 0) and "position 0" in res["details"][0]
    res = col.import_bulk(docs, on_duplicate="ignore")
    assert (res["created"], res["ignored"]) == (0, 2)
    res = col.import_bulk(docs, on_duplicate="update")
    assert res["updated"] == 2 and col.get("e1") == {**col.get("e1"), "a": 2, "b": 1}
    res = col.import_bulk([{"_key": "e1", "c": 1}], on_duplicate="replace")
    assert res["updated"] == 1 and "a" not in col.get("e1") and col.get("e1")["c"] == 1
    res = col.import_bulk([{"_key": "x"}], overwrite=True)
    assert res["created"] == 1 and {doc["_key"] for doc in col.all()} == {"x"}


def test_get_has_delete_count_all_truncate_and_cursor_batches(db):
    col = db.create_collection("jobs")
    col.insert_many([{"_key": f"j{i}", "i": i} for i in range(5)])
    assert col.get("nope") is None and col.has("j1") and not col.has("nope")
    assert col.delete("j1")["_key"] == "j1" and not col.has("j1")
    with pytest.raises(DocumentDeleteError) as info:
        col.delete("j1")
    assert info.value.error_code == 1202
    assert col.delete("j1", ignore_missing=True) is False
    assert col.count() == 4 and sorted(d["_key"] for d in col.all()) == ["j0", "j2", "j3", "j4"]
    assert len([d["_key"] for d in col.all(skip=1, limit=2)]) == 2  # order is not guaranteed

    cursor = db.aql.execute("FOR d IN @@c RETURN d.i", bind_vars={"@c": "jobs"}, batch_size=2, count=True)
    assert cursor.has_more() and len(cursor) == 4
    assert sorted(cursor) == [0, 2, 3, 4]
    cursor = db.aql.execute("FOR d IN jobs RETURN d", batch_size=1)
    assert cursor.close() is True

    col.truncate()
    assert col.count() == 0


def test_edges_need_valid_from_and_to(db):
    edges = db.create_collection("writes", edge=True)
    assert edges.insert({"_key": "w", "_from": "steps/s1", "_to": "datasets/d1"})["_id"] == "writes/w"
    with pytest.raises(DocumentInsertError) as info:
        edges.insert({"_from": "steps/s1"})
    assert info.value.error_code == 1233


@pytest.fixture
def lineage(db):
    """queue q1 -> steps s1, s2; s1 reads d0 and writes d1; s2 reads d1 and writes d2."""
    graph = db.create_graph("lineage", edge_definitions=[
        {"edge_collection": "has_step", "from_vertex_collections": ["queues"], "to_vertex_collections": ["steps"]},
        {"edge_collection": "io", "from_vertex_collections": ["steps", "datasets"],
         "to_vertex_collections": ["steps", "datasets"]}])
    db.collection("queues").insert({"_key": "q1"})
    db.collection("steps").insert_many([{"_key": "s1", "kind": "fetch"}, {"_key": "s2", "kind": "agg"}])
    db.collection("datasets").insert_many([{"_key": f"d{i}"} for i in range(3)])
    db.collection("has_step").insert_many([{"_from": "queues/q1", "_to": f"steps/{s}"} for s in ("s1", "s2")])
    graph.edge_collection("io").insert({"_from": "datasets/d0", "_to": "steps/s1", "mode": "read"})
    db.collection("io").insert_many([
        {"_from": "steps/s1", "_to": "datasets/d1", "mode": "write"},
        {"_from": "datasets/d1", "_to": "steps/s2", "mode": "read"},
        {"_from": "steps/s2", "_to": "datasets/d2", "mode": "write"}])
    return db


def keys(db, query, **bind_vars):
    return sorted(db.aql.execute(query, bind_vars=bind_vars))


def test_traversals_over_lineage_graph(lineage):
    db = lineage
    out = "FOR v IN 1..1 OUTBOUND @start GRAPH @g RETURN v._key"
    assert keys(db, out, start="queues/q1", g="lineage") == ["s1", "s2"]
    assert keys(db, "FOR v IN 1..6 OUTBOUND @s GRAPH 'lineage' RETURN DISTINCT v._key", s="steps/s1") == [
        "d1", "d2", "s2"]
    upstream = "FOR v IN 1..10 INBOUND @s GRAPH 'lineage' RETURN DISTINCT v._key"
    assert keys(db, upstream, s="datasets/d2") == ["d0", "d1", "q1", "s1", "s2"]
    assert keys(db, "FOR v IN 0..1 INBOUND @s GRAPH 'lineage' RETURN v._key", s={"_id": "steps/s2"}) == [
        "d1", "q1", "s2"]
    assert keys(db, "FOR v IN 1 ANY 'steps/s1' GRAPH 'lineage' RETURN v._key") == ["d0", "d1", "q1"]
    assert keys(db, "FOR v IN ANY 'steps/s1' GRAPH 'lineage' RETURN v._key") == ["d0", "d1", "q1"]
    filtered = "FOR v, e IN 1..3 OUTBOUND 'queues/q1' GRAPH 'lineage' FILTER e.mode == 'write' RETURN v._key"
    assert keys(db, filtered) == ["d1", "d2"]
    paths = list(db.aql.execute("FOR v, e, p IN 2 OUTBOUND 'queues/q1' GRAPH 'lineage' "
                                "FILTER v._key == 'd2' RETURN p"))
    assert [[x["_key"] for x in p["vertices"]] for p in paths] == [["q1", "s2", "d2"]]
    assert keys(db, out, start="queues/missing", g="lineage") == []
    with pytest.raises(AQLQueryExecuteError) as info:
        keys(db, out, start="queues/q1", g="nope")
    assert info.value.error_code == 1924


def test_simple_filters_on_a_collection(lineage):
    db = lineage
    steps = db.collection("steps")
    steps.insert({"_key": "s3", "kind": "fetch", "n": 1, "meta": {"host": "a"}})
    query = "FOR d IN @@col FILTER d.kind == @kind RETURN d._key"
    assert keys(db, query, **{"@col": "steps", "kind": "fetch"}) == ["s1", "s3"]
    assert keys(db, "FOR d IN steps FILTER d.kind != 'fetch' RETURN d._key") == ["s2"]
    assert keys(db, "FOR d IN steps FILTER d.kind == 'fetch' AND d.n == 1 RETURN d.meta.host") == ["a"]
    assert keys(db, "FOR d IN steps FILTER d.n == true RETURN d") == []  # AQL equality is type-strict
    assert keys(db, "FOR d IN steps FILTER d._key IN @ks RETURN d._key", ks=["s2", "s3", "zz"]) == ["s2", "s3"]
    assert keys(db, "FOR d IN steps FILTER d.missing == null LIMIT 2 RETURN 1") == [1, 1]
    docs = list(db.aql.execute("FOR d IN steps FILTER d._key == 's2' RETURN d"))
    assert docs == [steps.get("s2")]


@pytest.mark.parametrize("query,bind_vars,error_num", [
    ("FOR d IN steps FILTER d.kind == @k RETURN d", {}, 1551),
    ("FOR d IN steps RETURN d", {"unused": 1}, 1552),
    ("FOR d IN nowhere RETURN d", {}, 1203),
    ("FOR d IN steps RETURN", {}, 1501),
])
def test_invalid_aql_is_an_error(lineage, query, bind_vars, error_num):
    with pytest.raises(AQLQueryExecuteError) as info:
        lineage.aql.execute(query, bind_vars=bind_vars)
    assert info.value.error_code == error_num


@pytest.mark.parametrize("query", [
    "FOR d IN steps SORT d.kind RETURN d",
    "FOR d IN steps FILTER d.n == 1 OR d.n == 2 RETURN d",
    "FOR d IN steps COLLECT k = d.kind RETURN k",
    "FOR d IN steps RETURN LENGTH(d)",
    "FOR v IN 1..2 OUTBOUND 'steps/s1' io RETURN v",
    "INSERT {a: 1} INTO steps",
    "FOR d IN steps UPSERT {kind: d.kind} INSERT d UPDATE {} IN steps",
    "FOR d IN steps REMOVE d IN steps OPTIONS {unknownOption: true}",
])
def test_the_emulator_refuses_aql_it_does_not_implement(emu, lineage, query):
    with pytest.raises(AQLQueryExecuteError) as info:
        lineage.aql.execute(query)
    assert info.value.http_code == 400 and info.value.error_code == 1501 and "emulator" in info.value.error_message


def test_wrong_credentials_are_rejected(target, user, db):
    bad = connect(target, (user[0], "wrong"), db.name)
    with pytest.raises(ServerVersionError) as info:
        bad.version()
    assert (info.value.http_code, info.value.error_code) == (401, 11)
    with pytest.raises(CollectionListError) as info:
        connect(target, ("intruder", user[1]), db.name).has_collection("x")
    assert info.value.http_code == 401


def test_outage_refuses_connections_and_keeps_data(emu, db):
    db.create_collection("queues").insert({"_key": "q1", "status": "new"})
    url = emu.url
    emu.go_down()
    with pytest.raises(ConnectionAbortedError):
        db.collection("queues").insert({"_key": "q2"})
    emu.come_back()
    assert emu.url == url
    assert db.collection("queues").get("q1")["status"] == "new" and not db.collection("queues").has("q2")


def test_request_log(emu, db):
    db.create_collection("queues")
    entry = emu.requests[-1]
    assert (entry["method"], entry["path"], entry["db"], entry["status"]) == (
        "POST", f"/_db/{db.name}/_api/collection", db.name, 200)


def test_unknown_database(target, user, db):
    with pytest.raises(CollectionListError) as info:
        connect(target, user, "ghost").has_collection("x")
    assert (info.value.http_code, info.value.error_code) == (404, 1228)
    with pytest.raises(DatabasePropertiesError) as info:
        connect(target, user, "ghost").properties()
    assert (info.value.http_code, info.value.error_code) == (404, 1228)


def test_database_listing_only_from_system_database(db):
    with pytest.raises(Exception) as info:
        db.has_database("mirror")
    assert info.value.error_code == 1230


def test_string_literals_and_concurrent_writers(target, user, db):
    col = db.create_collection("events")
    col.insert({"_key": "e", "text": "it's \"quoted\"\n"})
    assert keys(db, "FOR d IN events FILTER d.text == 'it\\'s \"quoted\"\\n' RETURN d._key") == ["e"]
    assert keys(db, 'FOR d IN events FILTER d.text == "it\'s \\"quoted\\"\\n" RETURN d._key') == ["e"]

    def writer(n):
        mine = connect(target, user, db.name).collection("events")
        for i in range(20):
            mine.insert({"_key": f"w{n}-{i % 5}", "i": i}, overwrite_mode="update")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    docs = {doc["_key"]: doc for doc in col.all()}
    assert len(docs) == 21 and all(docs[f"w{n}-4"]["i"] == 19 for n in range(4))


def test_graph_edge_insert_checks_definition_and_vertices(lineage):
    io = lineage.graph("lineage").edge_collection("io")
    with pytest.raises(DocumentInsertError) as info:
        io.insert({"_from": "queues/q1", "_to": "steps/s1"})  # queues is not a "from" collection of io
    assert info.value.error_code == 1906
    with pytest.raises(DocumentInsertError) as info:
        io.insert({"_from": "steps/s1", "_to": "datasets/ghost"})
    assert info.value.error_code == 1202


# ---------------------------------------------------------------- users and rights (issue #13)
def test_a_user_with_rights_on_one_database_only(target, user, db):
    """Own database: yes; _system and the database list: no (401, errorNum 11)."""
    assert db.properties()["name"] == db.name
    assert db.databases_accessible_to_user() == [db.name]
    system = connect(target, user, "_system")
    with pytest.raises(DatabaseListError) as info:
        system.databases()
    assert (info.value.http_code, info.value.error_code) == (401, 11)
    with pytest.raises(DatabaseCreateError) as info:
        system.create_database("contract_not_mine")
    assert info.value.http_code == 401
    assert not target.admin.has_database("contract_not_mine")


def test_read_only_and_no_access(target, user, database):
    """ro: reads pass, writes answer 403 (errorNum 11); none: 401 (errorNum 11) like a missing login."""
    grant_user(target.admin, user[0], database, "rw")
    writer = connect(target, user, database)
    writer.create_collection("queues").insert({"_key": "q", "version": 1})
    grant_user(target.admin, user[0], database, "ro")
    reader = connect(target, user, database)
    assert reader.collection("queues").get("q")["version"] == 1
    assert list(reader.aql.execute("FOR d IN queues RETURN d._key")) == ["q"]
    with pytest.raises(CollectionCreateError) as info:
        reader.create_collection("other")
    assert (info.value.http_code, info.value.error_code) == (403, 11)
    with pytest.raises(AQLQueryExecuteError) as info:
        mirror_arango.delete_keys(reader, "queues", ["q"])
    assert info.value.http_code == 403
    grant_user(target.admin, user[0], database, "none")
    with pytest.raises(CollectionListError) as info:
        connect(target, user, database).collections()
    assert (info.value.http_code, info.value.error_code) == (401, 11)


def test_a_database_created_for_a_user_is_theirs(target, user):
    """POST /_api/database with `users`: the listed user gets rw on it, nothing else."""
    name = f"contract_{uuid.uuid4().hex[:10]}"
    target.admin.update_permission(user[0], "rw", "_system")
    creator = connect(target, user, "_system")
    try:
        assert creator.create_database(name, users=[{"username": user[0], "password": user[1], "active": True}])
        with pytest.raises(DatabaseCreateError) as info:
            creator.create_database(name)
        assert (info.value.http_code, info.value.error_code) == (409, 1207)
        connect(target, user, name).create_collection("queues")
    finally:
        target.admin.delete_database(name, ignore_missing=True)


# ---------------------------------------------------------------- the mirror's write shapes (issue #13)
def upsert(db, docs, collection="queues"):
    return list(db.aql.execute(mirror_arango.UPSERT_AQL, bind_vars={"@col": collection, "docs": docs}))


def test_the_versioned_upsert_keeps_the_newer_document(db):
    db.create_collection("queues")
    assert upsert(db, [{"_key": "a", "version": 5, "x": 1}, {"_key": "b", "version": 1}]) == [None, None]
    assert upsert(db, [{"_key": "a", "version": 3, "x": 2}, {"_key": "b", "version": 2, "y": 1}]) == [5, 1]
    assert db.collection("queues").get("a")["x"] == 1  # older: kept the stored one
    b = db.collection("queues").get("b")
    assert b["version"] == 2 and b["y"] == 1
    assert upsert(db, [{"_key": "a", "version": 5}]) == [5]  # same version: no change
    assert db.collection("queues").get("a")["x"] == 1
    upsert(db, [{"_key": "a", "version": 9}])
    assert "x" not in db.collection("queues").get("a")  # a replace, not a merge


def test_a_write_query_is_all_or_nothing(db):
    queues = db.create_collection("queues")
    queues.add_index({"type": "persistent", "fields": ["job"], "unique": True})
    queues.insert({"_key": "holder", "job": "j1", "version": 1})
    with pytest.raises(AQLQueryExecuteError) as info:
        upsert(db, [{"_key": "a", "version": 1}, {"_key": "b", "job": "j1", "version": 1}])
    assert (info.value.http_code, info.value.error_code) == (409, 1210)
    assert not queues.has("a")


def test_bulk_removes_with_and_without_a_version_guard(db):
    col = db.create_collection("telemetry")
    col.insert_many([{"_key": f"e{i}", "version": i} for i in range(6)] + [{"_key": "plain"}])
    assert mirror_arango.delete_keys(db, "telemetry", ["e0", "e1", "missing"]) == 2
    assert mirror_arango.delete_keys(db, "telemetry", ["e2", "e3", "e4", "plain"], older_than=4) == 3
    assert sorted(doc["_key"] for doc in col.all()) == ["e4", "e5"]
    results = col.delete_many(["e4", "gone"])  # the document API's bulk delete
    assert results[0]["_key"] == "e4" and isinstance(results[1], DocumentDeleteError)
    assert results[1].error_code == 1202


# ---------------------------------------------------------------- hashed lookups keep AQL's equality (issue #12)
def test_in_lists_and_distinct_use_aql_equality(db):
    """Issue #12 (mirror lag: the emulator hashes IN lists, DISTINCT and unique indexes instead of scanning):
    type-strict equality, numbers equal across int/float, arrays and objects by value."""
    col = db.create_collection("things")
    col.insert_many([{"_key": "i", "v": 1}, {"_key": "f", "v": 2.5}, {"_key": "b", "v": True},
                     {"_key": "s", "v": "1"}, {"_key": "n", "v": None}, {"_key": "a", "v": [1, "x"]},
                     {"_key": "o", "v": {"p": 1, "q": [2]}}, {"_key": "m"}])

    def where(values, op="IN"):
        return sorted(keys(db, f"FOR d IN things FILTER d.v {op} @vs RETURN d._key", vs=values))

    assert where([1.0]) == ["i"]
    assert where([1]) == ["i"]  # not the boolean true, not the string "1"
    assert where([True, "1"]) == ["b", "s"]
    assert where([None]) == ["m", "n"]  # a missing attribute is null
    assert where([[1.0, "x"], {"q": [2.0], "p": 1}]) == ["a", "o"]
    assert where([[1], {"p": 1}]) == []
    assert where([1, 2.5, True, "1", None], op="NOT IN") == ["a", "o"]
    assert keys(db, "FOR d IN things FILTER d.v IN @vs RETURN d._key", vs="not a list") == []
    values = list(db.aql.execute("FOR d IN @vs RETURN DISTINCT d",
                                 bind_vars={"vs": [1, 1.0, True, "1", [1], [1.0], {"a": 1}, {"a": 1.0}]}))
    assert sorted(type(v).__name__ for v in values) in (["bool", "dict", "int", "list", "str"],
                                                         ["bool", "dict", "float", "list", "str"])


def test_unique_index_inside_one_write_query(db):
    """Issue #12 (the emulator's unique check is a hash per query): a document may take a value another
    document of the same query gave up before it, not one it still holds; nulls are values unless sparse."""
    col = db.create_collection("steps")
    col.add_index({"type": "persistent", "fields": ["job"], "unique": True})
    col.add_index({"type": "persistent", "fields": ["alias"], "unique": True, "sparse": True})
    col.insert({"_key": "holder", "job": "j1", "version": 1})
    upsert(db, [{"_key": "holder", "job": "j2", "version": 2}, {"_key": "taker", "job": "j1", "version": 2}],
           collection="steps")
    assert {d["_key"]: d["job"] for d in col.all()} == {"holder": "j2", "taker": "j1"}
    with pytest.raises(AQLQueryExecuteError) as info:  # takes j2 while holder still has it
        upsert(db, [{"_key": "taker", "job": "j2", "version": 3}, {"_key": "holder", "job": "j3", "version": 3}],
               collection="steps")
    assert info.value.error_code == 1210
    assert {d["_key"]: d["job"] for d in col.all()} == {"holder": "j2", "taker": "j1"}  # nothing written
    with pytest.raises(AQLQueryExecuteError) as info:  # 1 and 1.0 are the same value
        upsert(db, [{"_key": "x", "job": 7, "version": 1}, {"_key": "y", "job": 7.0, "version": 1}], collection="steps")
    assert info.value.error_code == 1210
    upsert(db, [{"_key": "x", "job": 7, "version": 1}, {"_key": "y", "job": "7", "version": 1}], collection="steps")
    with pytest.raises(AQLQueryExecuteError) as info:  # two documents without `job`: null twice
        upsert(db, [{"_key": "p", "version": 1}, {"_key": "q", "version": 1}], collection="steps")
    assert info.value.error_code == 1210
    col.insert_many([{"_key": "p", "job": "jp"}, {"_key": "q", "job": "jq"}])  # sparse alias: no value, no clash
    results = col.insert_many([{"_key": "r", "job": "jr", "alias": "a"}, {"_key": "s", "job": "js", "alias": "a"}])
    assert isinstance(results[1], DocumentInsertError) and results[1].error_code == 1210
    assert col.has("r") and not col.has("s")
