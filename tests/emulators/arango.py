"""In-process ArangoDB HTTP emulator for tests (no ArangoDB server can be installed here).

It speaks enough of ArangoDB's REST API over real HTTP for the real ``python-arango`` client, and is
exactly as strict as a real 3.11/3.12 single server where the product depends on it; the contract
suite ``tests/emulators/test_arango_emulator.py`` runs the same assertions against a real server.

* ``/_db/<name>/...`` prefixes; users with per-database access levels (``rw``/``ro``/``none``, the
  ``*`` wildcard, ``_system`` access separate), managed through ``/_api/user`` like the real server.
  The constructor's user is the superuser (``rw`` everywhere). Bad credentials -> 401 (errorNum 11);
  a database that does not exist -> 404 (1228); no access to an existing one -> 401 (11); a write
  with ``ro`` access -> 403 (11); listing or creating databases needs ``_system`` access.
  Collection-level grants are stored but not enforced (the database level decides).
* ``GET /_api/version``, databases (list / list the caller's / current / create / delete),
  collections (list / create / get / count / truncate / delete), indexes (``persistent`` plus the
  ``hash``/``skiplist`` aliases, with "ensure" semantics; unique ones are enforced), documents
  (insert single and array with ``overwrite``/``overwriteMode``/``keepNull``/``mergeObjects``/
  ``returnNew``/``returnOld``/``silent``; get / head / update / replace / delete by key with
  ``If-Match``; bulk delete with a list body), ``POST /_api/import`` (type array, ``onDuplicate``,
  ``complete``, ``overwrite``, ``details``), named graphs (gharial: create / get / list / delete,
  vertex and edge insert), and the cursor API with batches and write statistics.
* AQL: the subset in ``arango_aql.py`` (reads, traversals, and the UPSERT/REMOVE shapes the mirror
  uses); anything else -> HTTP 400, errorNum 1501. A query is atomic.
* Every write gets a fresh ``_rev``. Errors use ArangoDB's envelope
  ``{"error": true, "errorNum": N, "errorMessage": "...", "code": HTTP}`` with the real numbers
  (1202 document not found, 1203 collection not found, 1207 duplicate name, 1210 unique constraint,
  1228 database not found, 11 forbidden / not authorized).
* Test hooks: ``requests`` (a log, with the AQL text of cursor requests), ``after_request`` (called
  with the log entry once a request was applied and before its answer is sent, e.g. to let another
  writer in between two requests of a client), ``go_down``/``come_back`` (an outage).

Not supported: JWT auth, bulk update/replace, JSONL imports, other index types (answered with
501), anonymous-graph traversals. Scan order is insertion order, which real ArangoDB does not
guarantee.
"""
import base64
import copy
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from .arango_aql import ArangoError, _AqlParser, _attr, _eval, _holds, aql_key

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-:.@()+,=;$!*'%]{1,254}$")
_ID_RE = re.compile(r"^([A-Za-z0-9_\-]+)/([A-Za-z0-9_\-:.@()+,=;$!*'%]{1,254})$")


def _flag(params, name, default=False):
    value = params.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


def _merge(old, patch, keep_null, merge_objects, top=True):
    out = dict(old)
    for k, v in patch.items():
        if top and k in ("_key", "_id", "_rev"):
            continue
        if v is None and not keep_null:
            out.pop(k, None)
        elif merge_objects and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, keep_null, merge_objects, top=False)
        else:
            out[k] = v
    return out



class _Server(ThreadingHTTPServer):
    # arangod's listen backlog (--tcp.backlog-size, 64 by default), not socketserver's 5: clients that
    # connect at once (a request per connection here) must not have their handshakes dropped.
    request_queue_size = 64

class _Collection:
    def __init__(self, cid, name, ctype):
        self.id, self.name, self.type = cid, name, ctype
        self.docs = {}
        self.indexes = [{"id": f"{name}/0", "type": "primary", "name": "primary", "fields": ["_key"],
                         "unique": True, "sparse": False}]
        if ctype == 3:
            self.indexes.append({"id": f"{name}/2", "type": "edge", "name": "edge", "fields": ["_from", "_to"],
                                 "unique": False, "sparse": False})
        # Unique indexes as hashes, so a write checks in O(1) like a server's index instead of scanning:
        # index id -> value -> the _keys written with that value. Every document enters through
        # `_write` (or the index's creation), so this is a superset of who holds a value in coll.docs
        # and in any scratch copy; entries of replaced, removed or rolled-back documents stay and are
        # checked against the documents at hand (`_check_unique`), so they never cause a false conflict.
        self.unique_owners = {}

    def info(self):
        return {"id": self.id, "name": self.name, "isSystem": self.name.startswith("_"), "type": self.type,
                "status": 3, "globallyUniqueId": f"emu{self.id}"}


def _unique_value(index, doc):
    """The hashable value a unique index holds for ``doc`` (None: not indexed, a sparse index and a null)."""
    values = [_attr(doc, f.split(".")) for f in index["fields"]]
    return None if index["sparse"] and None in values else aql_key(values)


def _unique_indexes(coll):
    return [i for i in coll.indexes if i["type"] == "persistent" and i["unique"]]


# ---------------------------------------------------------------- the emulator
class ArangoEmulator:
    def __init__(self, username="root", password="", version="3.11.0"):
        # name -> password, access levels by database ("*" = any), collection grants (stored only)
        self.users = {username: {"password": password, "databases": {"*": "rw"}, "collections": {}}}
        self.version = version
        self.requests = []  # request log: dicts with method, path, params, db, status (and query)
        self.after_request = None  # test hook, see the module docstring
        self._lock = threading.RLock()
        self._dbs = {"_system": {"collections": {}, "graphs": {}}}
        self._ids = itertools.count(1000)
        self._cursors = {}
        self._server = self._thread = None
        self.port = 0

    # lifecycle -------------------------------------------------------------
    def start(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: go_down() cuts everyone off

            def log_message(self, *args):
                pass

            def _any(self):
                emulator._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def go_down(self):
        """Outage: close the listening socket, so new connections are refused."""
        self.stop()

    def come_back(self):
        """End of outage: listen on the same port again; data survives, open cursors do not."""
        with self._lock:
            self._cursors.clear()
        self.start()

    @property
    def is_up(self):
        return self._server is not None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # inspection for tests --------------------------------------------------
    def documents(self, db, collection):
        with self._lock:
            return copy.deepcopy(self._coll(db, collection).docs)

    def indexes(self, db, collection):
        with self._lock:
            return copy.deepcopy(self._coll(db, collection).indexes)

    def databases(self):
        with self._lock:
            return sorted(self._dbs)

    # HTTP plumbing ---------------------------------------------------------
    def _serve(self, h):
        url = urlsplit(h.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        parts = [unquote(p) for p in url.path.split("/") if p]
        db = "_system"
        if len(parts) >= 2 and parts[0] == "_db":
            db, parts = parts[1], parts[2:]
        status, body, data = 500, None, None
        try:
            raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            try:
                data = json.loads(raw) if raw.strip() else None
            except ValueError as exc:
                raise ArangoError(400, 600, f"VPackError error: {exc}")
            with self._lock:
                self._caller = self._authenticate(h.headers.get("Authorization", ""))
                if self._caller is None:
                    raise ArangoError(401, 11, "not authorized to execute this request")
                if db not in self._dbs:
                    raise ArangoError(404, 1228, "database not found")
                if self._level(db) == "none":
                    raise ArangoError(401, 11, "not authorized to execute this request")
                status, body = self._route(h.command, parts, params, data, db, h.headers)
        except ArangoError as err:
            status, body = err.code, err.body()
        except Exception as exc:  # a bug in the emulator must be loud, not a hang
            status, body = 500, ArangoError(500, 4, f"emulator internal error: {exc!r}").body()
        entry = {"method": h.command, "path": url.path, "params": params, "db": db, "status": status}
        if parts[-1:] == ["cursor"] and isinstance(data, dict):
            entry["query"] = data.get("query")
        self.requests.append(entry)
        if self.after_request is not None:
            self.after_request(entry)
        payload = b"" if h.command == "HEAD" else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(payload)))
        h.send_header("Connection", "close")
        if isinstance(body, dict) and "_rev" in body:
            h.send_header("Etag", f'"{body["_rev"]}"')
        if status == 401:
            h.send_header("Www-Authenticate", 'Basic, realm="ArangoDB"')
        h.end_headers()
        h.wfile.write(payload)

    def _authenticate(self, header):
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if user in self.users and self.users[user]["password"] == password else None

    def _level(self, db, user=None):
        """The caller's access level on a database: an explicit grant, else the "*" default, else none."""
        grants = self.users.get(user or self._caller, {}).get("databases", {})
        return grants.get(db) or grants.get("*") or "none"

    def _require_rw(self, db):
        if self._level(db) != "rw":
            raise ArangoError(403, 11, "forbidden")

    def _route(self, method, parts, params, data, db, headers):
        path = "/" + "/".join(parts)
        if parts[:1] != ["_api"] or len(parts) < 2:
            raise ArangoError(404, 404, f"unknown path '{path}'")
        area, rest = parts[1], parts[2:]
        if method not in ("GET", "HEAD") and area in ("collection", "index", "document", "import", "gharial"):
            self._require_rw(db)
        handler = getattr(self, f"_api_{area}", None)
        result = handler(method, rest, params, data, db, headers) if handler else None
        if result is None:
            raise ArangoError(405 if handler else 404, 405 if handler else 404,
                              f"{'method not supported' if handler else 'unknown path'} {method} '{path}'")
        return result

    # helpers ---------------------------------------------------------------
    def _coll(self, db, name, aql=False):
        coll = self._dbs[db]["collections"].get(name)
        if coll is None:
            raise ArangoError(404, 1203, f"AQL: collection or view not found: {name} (while parsing)" if aql
                              else f"collection or view not found: {name}")
        return coll

    def _new_rev(self):
        return f"_rev{next(self._ids):x}"

    def _lookup(self, db, doc_id):
        m = _ID_RE.match(doc_id) if isinstance(doc_id, str) else None
        coll = m and self._dbs[db]["collections"].get(m.group(1))
        return coll.docs.get(m.group(2)) if coll else None

    def _write(self, coll, docs, doc, mode, keep_null=True, merge_objects=True):
        """Insert ``doc`` into ``docs`` (coll.docs or a scratch copy). Returns (new, old, written)."""
        if not isinstance(doc, dict):
            raise ArangoError(400, 1227, "invalid document type")
        key = doc.get("_key")
        if key is None:
            key = str(next(self._ids))
        elif not isinstance(key, str) or not _KEY_RE.match(key):
            raise ArangoError(400, 1221, "illegal document key")
        old = docs.get(key)
        if old is not None and mode == "conflict":
            raise ArangoError(409, 1210, "unique constraint violated - in index primary of type primary over "
                                         f"'_key'; conflicting key: {key}", _key=key)
        if old is not None and mode == "ignore":
            return old, old, False
        new = _merge(old, doc, keep_null, merge_objects) if old is not None and mode == "update" else \
            {k: v for k, v in doc.items() if k not in ("_id", "_rev")}
        new.update(_key=key, _id=f"{coll.name}/{key}", _rev=self._new_rev())
        if coll.type == 3 and not all(isinstance(new.get(a), str) and _ID_RE.match(new[a]) for a in ("_from", "_to")):
            raise ArangoError(400, 1233, "edge attribute missing or invalid")
        self._check_unique(coll, docs, new)
        docs[key] = new
        for index in _unique_indexes(coll):
            value = _unique_value(index, new)
            if value is not None:
                coll.unique_owners.setdefault(index["id"], {}).setdefault(value, set()).add(key)
        return new, old, True

    @staticmethod
    def _check_unique(coll, docs, new):
        """1210 when another document of ``docs`` holds ``new``'s value in a unique index."""
        for index in _unique_indexes(coll):
            value = _unique_value(index, new)
            if value is None:
                continue
            for key in sorted(coll.unique_owners.get(index["id"], {}).get(value, ())):
                other = docs.get(key)
                if key != new["_key"] and other is not None and _unique_value(index, other) == value:
                    raise ArangoError(409, 1210, f"unique constraint violated - in index {index['name']} of type "
                                                 f"persistent over {index['fields']}; conflicting key: {key}",
                                      _key=new["_key"])

    @staticmethod
    def _meta(new, old, written, params):
        meta = {k: new[k] for k in ("_id", "_key", "_rev")}
        if old is not None and written:
            meta["_oldRev"] = old["_rev"]
        if _flag(params, "returnNew") and written:
            meta["new"] = new
        if _flag(params, "returnOld") and old is not None and written:
            meta["old"] = old
        return meta

    # REST areas ------------------------------------------------------------
    def _api_version(self, method, rest, params, data, db, headers):
        if method == "GET" and not rest:
            body = {"server": "arango", "version": self.version, "license": "community"}
            if _flag(params, "details"):
                body["details"] = {"mode": "server", "role": "SINGLE", "emulator": "true"}
            return 200, body

    def _api_database(self, method, rest, params, data, db, headers):
        ok = {"error": False, "code": 200, "result": True}
        if method == "GET" and rest == ["user"]:
            return 200, {"error": False, "code": 200, "result": [n for n in sorted(self._dbs) if self._level(n) != "none"]}
        if method == "GET" and not rest and db == "_system":
            return 200, {"error": False, "code": 200, "result": sorted(self._dbs)}
        if method == "GET" and rest == ["current"]:
            return 200, {"error": False, "code": 200, "result": {"name": db, "id": "1", "isSystem": db == "_system"}}
        if db != "_system" and (method in ("POST", "DELETE") or not rest):
            raise ArangoError(403, 1230, "operation only allowed in system database")
        if method in ("POST", "DELETE"):
            self._require_rw("_system")
        if method == "POST" and not rest:
            name = (data or {}).get("name")
            if not isinstance(name, str) or not re.match(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", name):
                raise ArangoError(400, 1229, "database name invalid")
            if name in self._dbs:
                raise ArangoError(409, 1207, "duplicate database name")
            self._dbs[name] = {"collections": {}, "graphs": {}}
            # Like the real server: the listed users get rw on the new database (created if missing);
            # the creating user gets nothing unless listed or granted "*".
            for spec in (data or {}).get("users") or []:
                user = self.users.setdefault(spec["username"], {"password": spec.get("passwd") or "",
                                                                "databases": {}, "collections": {}})
                if "passwd" in spec:
                    user["password"] = spec["passwd"] or ""
                user["databases"][name] = "rw"
            return 201, {**ok, "code": 201}
        if method == "DELETE" and len(rest) == 1:
            if rest[0] not in self._dbs or rest[0] == "_system":
                raise ArangoError(404, 1228, "database not found")
            del self._dbs[rest[0]]
            return 200, ok

    def _api_user(self, method, rest, params, data, db, headers):
        """Users and their database access levels; changing them needs rw on _system."""
        if method != "GET" or (rest and rest[0] != self._caller):
            self._require_rw("_system")
        data = data if isinstance(data, dict) else {}
        if method == "POST" and not rest:
            name = data.get("user")
            if not isinstance(name, str) or not name:
                raise ArangoError(400, 1700, "invalid user name")
            if name in self.users:
                raise ArangoError(409, 1702, "duplicate user")
            self.users[name] = {"password": data.get("passwd") or "", "databases": {}, "collections": {}}
            return 201, {"error": False, "code": 201, "user": name, "active": True, "extra": data.get("extra") or {}}
        user = self.users.get(rest[0]) if rest else None
        if user is None:
            raise ArangoError(404, 1703, "user not found")
        if method == "DELETE" and len(rest) == 1:
            del self.users[rest[0]]
            return 202, {"error": False, "code": 202}
        if len(rest) in (3, 4) and rest[1] == "database":
            if method == "GET" and len(rest) == 3:
                return 200, {"error": False, "code": 200, "result": self._level(rest[2], rest[0])}
            if method == "PUT":
                grant = data.get("grant")
                if grant not in ("rw", "ro", "none"):
                    raise ArangoError(400, 10, "invalid grant: use rw, ro or none")
                if len(rest) == 3:
                    user["databases"][rest[2]] = grant
                else:
                    user["collections"][(rest[2], rest[3])] = grant
                return 200, {"error": False, "code": 200, "/".join(rest[2:]): grant}

    def _create_collection(self, db, name, ctype):
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_\-]{0,255}$", name):
            raise ArangoError(400, 1208, "illegal name")
        if name in self._dbs[db]["collections"]:
            raise ArangoError(409, 1207, f"duplicate name: {name}")
        coll = self._dbs[db]["collections"][name] = _Collection(str(next(self._ids)), name, ctype)
        return coll

    def _api_collection(self, method, rest, params, data, db, headers):
        cols = self._dbs[db]["collections"]
        if not rest:
            if method == "GET":
                return 200, {"error": False, "code": 200, "result": [c.info() for c in cols.values()]}
            if method == "POST":
                data = data or {}
                coll = self._create_collection(db, data.get("name"), 3 if data.get("type") == 3 else 2)
                return 200, {"error": False, "code": 200, **coll.info(), "waitForSync": False}
            return None
        coll = self._coll(db, rest[0])
        sub = rest[1] if len(rest) > 1 else None
        if method == "GET" and sub in (None, "properties", "count"):
            body = {"error": False, "code": 200, **coll.info(), "waitForSync": False, "keyOptions":
                    {"type": "traditional", "allowUserKeys": True}}
            if sub == "count":
                body["count"] = len(coll.docs)
            return 200, body
        if method == "PUT" and sub == "truncate":
            coll.docs = {}
            return 200, {"error": False, "code": 200, **coll.info()}
        if method == "DELETE" and sub is None:
            del cols[coll.name]
            return 200, {"error": False, "code": 200, "id": coll.id}

    def _api_index(self, method, rest, params, data, db, headers):
        if method == "GET" and not rest:
            coll = self._coll(db, params.get("collection", ""))
            return 200, {"error": False, "code": 200, "indexes": coll.indexes,
                         "identifiers": {i["id"]: i for i in coll.indexes}}
        if method == "POST" and not rest:
            coll, data = self._coll(db, params.get("collection", "")), data or {}
            if data.get("type") not in ("persistent", "hash", "skiplist"):
                raise ArangoError(501, 9, f"index type {data.get('type')!r} is not implemented by the test emulator")
            fields = data.get("fields")
            if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
                raise ArangoError(400, 10, "index fields must be a non-empty array of strings")
            spec = {"type": "persistent", "fields": fields, "unique": bool(data.get("unique", False)),
                    "sparse": bool(data.get("sparse", False))}
            for index in coll.indexes:
                if all(index.get(k) == v for k, v in spec.items()):
                    return 200, {**index, "isNewlyCreated": False, "error": False, "code": 200}
            iid = next(self._ids)
            index = {"id": f"{coll.name}/{iid}", "name": data.get("name") or f"idx_{iid}", **spec}
            if index["unique"]:
                owners = {}
                for doc in coll.docs.values():
                    value = _unique_value(index, doc)
                    if value is not None and owners.get(value):
                        raise ArangoError(409, 1210, f"unique constraint violated - in index {index['name']} of "
                                                     f"type persistent over {fields}; conflicting key: {min(owners[value])}",
                                          _key=doc["_key"])
                    if value is not None:
                        owners[value] = {doc["_key"]}
                coll.unique_owners[index["id"]] = owners
            coll.indexes.append(index)
            return 201, {**index, "isNewlyCreated": True, "error": False, "code": 201}
        if method == "DELETE" and len(rest) == 2:
            coll = self._coll(db, rest[0])
            keep = [i for i in coll.indexes if i["id"] != f"{rest[0]}/{rest[1]}" or i["type"] in ("primary", "edge")]
            if len(keep) == len(coll.indexes):
                raise ArangoError(404, 1212, "index not found")
            coll.indexes = keep
            return 200, {"error": False, "code": 200, "id": f"{rest[0]}/{rest[1]}"}

    def _api_document(self, method, rest, params, data, db, headers):
        coll = self._coll(db, rest[0]) if rest else None
        wrote = 201 if _flag(params, "waitForSync") else 202
        keep_null, merge = _flag(params, "keepNull", True), _flag(params, "mergeObjects", True)
        if method == "POST" and len(rest) == 1:
            mode = params.get("overwriteMode") or ("replace" if _flag(params, "overwrite") else "conflict")
            if mode not in ("conflict", "ignore", "replace", "update"):
                raise ArangoError(400, 10, f"invalid overwriteMode: {mode}")
            silent = _flag(params, "silent")

            def insert(doc):
                return self._meta(*self._write(coll, coll.docs, doc, mode, keep_null, merge), params)
            if not isinstance(data, list):
                return wrote, {} if silent else insert(data)
            out = []
            for doc in data:  # bulk: no atomicity, per-document errors in place
                try:
                    meta = insert(doc)
                    if not silent:
                        out.append(meta)
                except ArangoError as err:
                    out.append({"error": True, "errorNum": err.num, "errorMessage": err.msg})
            return wrote, out
        if method == "DELETE" and len(rest) == 1 and isinstance(data, list):
            out = []
            for item in data:  # like the bulk insert: per-document errors in place, no atomicity
                key = item.get("_key") if isinstance(item, dict) else item
                old = coll.docs.pop(key, None) if isinstance(key, str) else None
                out.append({"error": True, "errorNum": 1202, "errorMessage": "document not found"} if old is None
                           else {k: old[k] for k in ("_id", "_key", "_rev")})
            return (200 if wrote == 201 else 202), out
        if len(rest) != 2 or method not in ("GET", "HEAD", "PATCH", "PUT", "DELETE"):
            return None
        key = rest[1]
        current = coll.docs.get(key)
        if current is None:
            raise ArangoError(404, 1202, "document not found")
        body_rev = data.get("_rev") if isinstance(data, dict) and not _flag(params, "ignoreRevs", True) else None
        for rev in ((headers.get("If-Match") or "").strip('"'), body_rev):
            if rev and rev != current["_rev"]:
                raise ArangoError(412, 1200, "conflict, _rev values do not match",
                                  **{k: current[k] for k in ("_id", "_key", "_rev")})
        if method in ("GET", "HEAD"):
            return 200, current
        if method == "DELETE":
            del coll.docs[key]
            meta = {k: current[k] for k in ("_id", "_key", "_rev")}
            if _flag(params, "returnOld"):
                meta["old"] = current
            return (200 if wrote == 201 else 202), meta
        if not isinstance(data, dict):
            raise ArangoError(400, 1227, "invalid document type")
        mode = "update" if method == "PATCH" else "replace"
        new, old, _ = self._write(coll, coll.docs, {**data, "_key": key}, mode, keep_null, merge)
        return wrote, self._meta(new, old, True, params)

    def _api_import(self, method, rest, params, data, db, headers):
        if method != "POST" or rest:
            return None
        coll = self._coll(db, params.get("collection", ""))
        if params.get("type", "auto") not in ("array", "list", "auto") or not isinstance(data, list):
            raise ArangoError(501, 9, "the test emulator only imports a JSON array of documents (type=array)")
        on_dup = params.get("onDuplicate", "error")
        if on_dup not in ("error", "update", "replace", "ignore"):
            raise ArangoError(400, 10, f"invalid onDuplicate: {on_dup}")
        docs = {} if _flag(params, "overwrite") else dict(coll.docs)  # scratch copy: applied at the end
        counts, details = {"created": 0, "errors": 0, "empty": 0, "updated": 0, "ignored": 0}, []
        for pos, doc in enumerate(data):
            if isinstance(doc, dict) and coll.type == 3:
                for attr, prefix in (("_from", params.get("fromPrefix")), ("_to", params.get("toPrefix"))):
                    if prefix and isinstance(doc.get(attr), str) and "/" not in doc[attr]:
                        doc[attr] = f"{prefix}/{doc[attr]}"
            exists = isinstance(doc, dict) and doc.get("_key") in docs
            if exists and on_dup == "ignore":
                counts["ignored"] += 1
                continue
            try:
                self._write(coll, docs, doc, "conflict" if on_dup == "error" else on_dup)
            except ArangoError as err:
                if _flag(params, "complete"):
                    raise  # complete=true: nothing is imported
                counts["errors"] += 1
                details.append(f"at position {pos}: creating document failed with error '{err.msg}', "
                               f"offending document: {json.dumps(doc)}")
                continue
            counts["updated" if exists else "created"] += 1
        coll.docs = docs
        body = {"error": False, **counts}
        if _flag(params, "details"):
            body["details"] = details
        return 201, body

    # AQL cursors -------------------------------------------------------------
    def _api_cursor(self, method, rest, params, data, db, headers):
        if method == "POST" and not rest:
            data = data if isinstance(data, dict) else {}
            if not isinstance(data.get("query"), str) or not data["query"].strip():
                raise ArangoError(400, 1502, "query is empty")
            batch = data.get("batchSize") or 1000
            if not isinstance(batch, int) or batch < 1:
                raise ArangoError(400, 10, "batchSize must be a positive integer")
            rows, stats = self._run_aql(db, data["query"], data.get("bindVars") or {})
            cursor = {"id": str(next(self._ids)), "rows": json.loads(json.dumps(rows)), "batch": batch,
                      "count": len(rows) if data.get("count") else None, "stats": stats}
            return 201, self._next_batch(cursor, 201)
        cursor = self._cursors.get(rest[0]) if len(rest) == 1 else None
        if method in ("PUT", "POST", "DELETE") and len(rest) == 1 and cursor is None:
            raise ArangoError(404, 1600, "cursor not found")
        if method in ("PUT", "POST") and cursor:
            return 200, {"id": cursor["id"], **self._next_batch(cursor, 200)}
        if method == "DELETE" and cursor:
            del self._cursors[rest[0]]
            return 202, {"id": rest[0], "error": False, "code": 202}

    def _next_batch(self, cursor, code):
        batch, cursor["rows"] = cursor["rows"][:cursor["batch"]], cursor["rows"][cursor["batch"]:]
        body = {"result": batch, "hasMore": bool(cursor["rows"]), "cached": False, "error": False, "code": code,
                "extra": {"warnings": [], "stats": dict(cursor["stats"])}}
        if cursor["count"] is not None:
            body["count"] = cursor["count"]
        if body["hasMore"]:
            body["id"] = cursor["id"]
            self._cursors[cursor["id"]] = cursor
        else:
            self._cursors.pop(cursor["id"], None)
        return body

    def _run_aql(self, db, query, bind_vars):
        plan = _AqlParser(query, bind_vars).parse()
        source = plan["source"]
        if plan["write"] is not None:
            self._require_rw(db)
            self._coll(db, plan["write"]["collection"], aql=True)
        if source[0] == "array":
            rows = [{plan["vars"][0]: v} for v in source[1]]
        elif source[0] == "collection":
            if source[1] not in self._dbs[db]["collections"]:
                raise ArangoError(404, 1203, f"AQL: collection or view not found: {source[1]} (while parsing)")
            rows = [{plan["vars"][0]: d} for d in self._dbs[db]["collections"][source[1]].docs.values()]
        else:
            _, low, high, direction, start, name = source
            graph = self._dbs[db]["graphs"].get(name)
            if graph is None:
                raise ArangoError(404, 1924, f"graph '{name}' not found")
            rows = self._traverse(db, graph, start, low, high, direction, plan["vars"])
        for op in plan["ops"]:
            if op[0] == "filter":
                rows = [r for r in rows if all(_holds(c, r) for c in op[1])]
            else:
                rows = rows[op[1]:] if op[2] is None else rows[op[1]:op[1] + op[2]]
        stats = {"writesExecuted": 0, "writesIgnored": 0}
        if plan["write"] is not None:
            rows = self._apply_writes(db, plan["write"], rows, stats)
        out, seen = [], set()
        for row in rows:
            if plan["ret"] is None:
                continue
            value = _eval(plan["ret"], row)
            if plan["distinct"]:
                if aql_key(value) in seen:
                    continue
                seen.add(aql_key(value))
            out.append(value)
        return out, stats

    # Errors a write query may skip with ignoreErrors: the document-level ones.
    _IGNORABLE = {1200, 1202, 1210, 1221, 1227, 1233}

    def _apply_writes(self, db, write, rows, stats):
        """Run UPSERT/REMOVE over the rows on a scratch copy: all or nothing, like one transaction."""
        coll = self._coll(db, write["collection"], aql=True)
        options = write["options"]
        keep_null, merge = options.get("keepNull", True), options.get("mergeObjects", True)
        scratch, out = dict(coll.docs), []
        for row in rows:
            try:
                if write["verb"] == "UPSERT":
                    key = _eval(write["key"], row)
                    old = scratch.get(key) if isinstance(key, str) else None
                    if old is None:
                        new, _, _ = self._write(coll, scratch, _eval(write["insert"], row), "conflict")
                    else:
                        change = _eval(write["change"], {**row, "OLD": old})
                        if not isinstance(change, dict):
                            raise ArangoError(400, 1227, "invalid document type")
                        new, _, _ = self._write(coll, scratch, {**change, "_key": key}, write["mode"], keep_null, merge)
                else:
                    target = _eval(write["target"], row)
                    key = target.get("_key") if isinstance(target, dict) else target
                    old, new = (scratch.pop(key, None) if isinstance(key, str) else None), None
                    if old is None:
                        raise ArangoError(404, 1202, "document not found")
            except ArangoError as err:
                if options.get("ignoreErrors") and err.num in self._IGNORABLE:
                    stats["writesIgnored"] += 1
                    continue
                err.msg = f"AQL: {err.msg} (while executing)"
                raise
            stats["writesExecuted"] += 1
            out.append({**row, "OLD": old, "NEW": new})
        coll.docs = scratch
        return out

    def _traverse(self, db, graph, start, low, high, direction, names):
        first = self._lookup(db, start.get("_id") if isinstance(start, dict) else start)
        if first is None:
            return []  # ArangoDB: warning "vertex not found" and an empty result
        cols = self._dbs[db]["collections"]
        edge_cols = [cols[d["collection"]] for d in graph["edgeDefinitions"] if d["collection"] in cols]
        rows = []

        def walk(vertex_id, vertices, edges):
            if len(edges) >= low:
                values = (vertices[-1], edges[-1] if edges else None, {"vertices": vertices, "edges": edges})
                rows.append(dict(zip(names, values)))
            if len(edges) == high:
                return
            on_path = {e["_id"] for e in edges}
            for coll in edge_cols:
                for edge in list(coll.docs.values()):
                    if edge["_id"] in on_path:
                        continue  # uniqueEdges: "path"
                    if direction != "INBOUND" and edge["_from"] == vertex_id:
                        nxt = edge["_to"]
                    elif direction != "OUTBOUND" and edge["_to"] == vertex_id:
                        nxt = edge["_from"]
                    else:
                        continue
                    walk(nxt, vertices + [self._lookup(db, nxt)], edges + [edge])

        walk(first["_id"], [first], [])
        return rows

    # named graphs (gharial) --------------------------------------------------
    def _api_gharial(self, method, rest, params, data, db, headers):
        graphs, cols = self._dbs[db]["graphs"], self._dbs[db]["collections"]
        if not rest and method == "GET":
            return 200, {"error": False, "code": 200, "graphs": list(graphs.values())}
        if not rest and method == "POST":
            data = data if isinstance(data, dict) else {}
            name, defs = data.get("name"), data.get("edgeDefinitions") or []
            orphans = data.get("orphanCollections") or []
            if not isinstance(name, str) or not re.match(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", name):
                raise ArangoError(400, 10, "invalid graph name")
            if name in graphs:
                raise ArangoError(409, 1925, "graph already exists")
            if not all(isinstance(d, dict) and isinstance(d.get("collection"), str) and isinstance(d.get("from"), list)
                       and isinstance(d.get("to"), list) for d in defs):
                raise ArangoError(400, 1923, "malformed edge definition")
            wanted = [(d["collection"], 3) for d in defs] + [(v, 2) for d in defs for v in d["from"] + d["to"]]
            for cname, ctype in wanted + [(o, 2) for o in orphans]:
                if cname in cols and cols[cname].type != ctype:
                    raise ArangoError(400, 1237, f"collection type invalid: {cname}")
            for cname, ctype in wanted + [(o, 2) for o in orphans]:
                if cname not in cols:
                    self._create_collection(db, cname, ctype)
            graphs[name] = {"_key": name, "_id": f"_graphs/{name}", "_rev": self._new_rev(), "name": name,
                            "edgeDefinitions": [{"collection": d["collection"], "from": sorted(d["from"]),
                                                 "to": sorted(d["to"])} for d in defs],
                            "orphanCollections": list(orphans), "numberOfShards": 1, "replicationFactor": 1,
                            "isSmart": False, "isDisjoint": False, "isSatellite": False}
            return 202, {"error": False, "code": 202, "graph": graphs[name]}
        graph = graphs.get(rest[0]) if rest else None
        if graph is None:
            raise ArangoError(404, 1924, f"graph '{rest[0] if rest else ''}' not found")
        defs = graph["edgeDefinitions"]
        vertex_names = sorted({v for d in defs for v in d["from"] + d["to"]} | set(graph["orphanCollections"]))
        if len(rest) == 1 and method == "GET":
            return 200, {"error": False, "code": 200, "graph": graph}
        if len(rest) == 1 and method == "DELETE":
            del graphs[rest[0]]
            if _flag(params, "dropCollections"):
                in_use = {c for g in graphs.values() for d in g["edgeDefinitions"] for c in [d["collection"],
                          *d["from"], *d["to"]]} | {o for g in graphs.values() for o in g["orphanCollections"]}
                for cname in set(vertex_names) | {d["collection"] for d in defs}:
                    if cname not in in_use:
                        cols.pop(cname, None)
            return 202, {"error": False, "code": 202, "removed": True}
        kind = rest[1] if len(rest) > 1 else None
        names = vertex_names if kind == "vertex" else [d["collection"] for d in defs]
        if len(rest) == 2 and method == "GET" and kind in ("vertex", "edge"):
            return 200, {"error": False, "code": 200, "collections": names}
        if len(rest) == 3 and method == "POST" and kind in ("vertex", "edge"):
            if rest[2] not in names:
                raise ArangoError(404, 1203, f"collection or view not found: {rest[2]}")
            coll = self._coll(db, rest[2])
            for d in defs if kind == "edge" and isinstance(data, dict) else []:
                if d["collection"] != rest[2]:
                    continue
                for attr, allowed in (("_from", d["from"]), ("_to", d["to"])):
                    m = _ID_RE.match(data.get(attr)) if isinstance(data.get(attr), str) else None
                    if not m:
                        raise ArangoError(400, 1233, "edge attribute missing or invalid")
                    if m.group(1) not in allowed:
                        raise ArangoError(400, 1906, f"invalid edge between {data['_from']} and {data['_to']}")
                    if self._lookup(db, data[attr]) is None:
                        raise ArangoError(404, 1202, "document not found")
            new, _, _ = self._write(coll, coll.docs, data, "conflict")
            body = {"error": False, "code": 202, kind: {k: new[k] for k in ("_id", "_key", "_rev")}}
            if _flag(params, "returnNew"):
                body["new"] = new
            return 202, body


def _serve_forever(argv=None):
    """``python -m tests.emulators.arango --port N --password P``: the emulator in a process of its own
    (benchmarks: the measured code must not share the interpreter lock with it). Prints its URL, then
    serves until SIGTERM/SIGINT. SIGUSR1 starts an outage (``go_down``: connections refused), SIGUSR2
    ends it (``come_back``: the same port, the data kept, as a restarted ArangoDB keeps its files)."""
    import argparse
    import signal
    import sys
    import time

    parser = argparse.ArgumentParser(prog="python -m tests.emulators.arango")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--username", default="root")
    parser.add_argument("--password", default="")
    args = parser.parse_args(argv)
    emulator = ArangoEmulator(username=args.username, password=args.password)
    emulator.port = args.port
    emulator.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR1, lambda *_: emulator.is_up and emulator.go_down())
    signal.signal(signal.SIGUSR2, lambda *_: emulator.is_up or emulator.come_back())
    print(emulator.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    _serve_forever()
