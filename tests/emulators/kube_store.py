"""The Kubernetes emulator's object index: a list costs what its page costs (issue #12).

A real API server answers lists from its watch cache, where objects are kept decoded, in key
order, and encoded once per version. The emulator's store used to sort, filter and deep-copy every
object of a kind for every page, so listing 2,000 Jobs in pages of 500 took seconds and 10,000
minutes, and a benchmark of the product's reconcile measured the emulator instead.
``ObjectIndex`` is the store's dict of objects keyed by (plural, namespace, name), with what lists
and the garbage collector need kept up to date on every write:

- per plural, the keys in (namespace, name) order: a page bisects to where it starts;
- each object's JSON, encoded when it is stored: a page is the join of its items' bytes;
- dependents by owner uid, pods by job-name label, uids present, Jobs deleted in the foreground:
  the garbage collector's look-ups, which scanned every object;
- a revision that only grows, as etcd's does: every write and every removal moves it.

Only the cost changes. Order, label selectors, continue tokens and their expiry, RBAC and deletion
are decided by kube.py as before. Objects are replaced, never changed in place, once stored
(the store's rule: a changed object goes back through ``put``), which is what keeps the cached
bytes and the owner indexes true.
"""
from __future__ import annotations

import bisect
import json

from .kube_watch import WatchLog, record_removal, record_write


class ObjectIndex(dict):
    """``{(plural, namespace, name): object}`` plus indexes; callers hold the store's lock."""

    def __init__(self, job_name_labels):
        super().__init__()
        self._job_name_labels = tuple(job_name_labels)
        self.revision = 999  # the first object stored gets 1000, as before
        self.watch_log = WatchLog(self.revision)  # every write and removal, for watches (kube_watch)
        self._clear_indexes()

    def _clear_indexes(self):
        self._order = {}  # plural -> sorted [(namespace, name)]
        self._encoded = {}  # key -> the object's JSON bytes
        self._refs = {}  # key -> (uid, owner uids, job-name labels) as indexed, to unindex exactly that
        self._by_owner = {}  # owner uid -> {key}
        self._by_job_name = {}  # (namespace, job name) -> {pod key}
        self._uids = {}  # uid -> {key}
        self._foreground = set()  # Job keys carrying the foregroundDeletion finalizer

    # ------------------------------------------------------------------ writes

    def next_rv(self) -> int:
        self.revision += 1
        return self.revision

    def __setitem__(self, key, obj):
        before = dict.get(self, key)
        if before is not None:
            self._unindex(key)
        else:
            bisect.insort(self._order.setdefault(key[0], []), key[1:])
        super().__setitem__(key, obj)
        self._index(key, obj)
        record_write(self.watch_log, key, before, obj, self._encoded[key])

    def __delitem__(self, key):
        obj = dict.__getitem__(self, key)
        super().__delitem__(key)
        self._forget(key, obj)

    def pop(self, key, *default):
        if key not in self:
            return super().pop(key, *default)
        obj = super().pop(key)
        self._forget(key, obj)
        return obj

    def clear(self):
        super().clear()
        self._clear_indexes()
        self.revision += 1
        self.watch_log.compact(self.revision)  # no history of what was cleared: older watches expire

    def _refuse(self, *args, **kwargs):
        raise TypeError("ObjectIndex is changed only by item assignment, del, pop and clear")

    update = setdefault = popitem = _refuse

    def _forget(self, key, obj):
        self._unindex(key)
        order = self._order[key[0]]
        del order[bisect.bisect_left(order, key[1:])]
        self.revision += 1  # a deletion is a new revision too: a later list never reports an older one
        record_removal(self.watch_log, key, obj, self.revision)

    def _index(self, key, obj):
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        uid = meta.get("uid")
        owners = tuple({ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("uid")})
        job_names = tuple({labels[k] for k in self._job_name_labels if labels.get(k)}) if key[0] == "pods" else ()
        self._refs[key] = (uid, owners, job_names)
        for owner in owners:
            self._by_owner.setdefault(owner, set()).add(key)
        for job_name in job_names:
            self._by_job_name.setdefault((key[1], job_name), set()).add(key)
        if uid:
            self._uids.setdefault(uid, set()).add(key)
        if key[0] == "jobs" and "foregroundDeletion" in (meta.get("finalizers") or []):
            self._foreground.add(key)
        self._encoded[key] = json.dumps(obj).encode()

    def _unindex(self, key):
        uid, owners, job_names = self._refs.pop(key)
        for bucket, value in [(self._by_owner, o) for o in owners] + \
                             [(self._by_job_name, (key[1], n)) for n in job_names] + \
                             ([(self._uids, uid)] if uid else []):
            keys = bucket[value]
            keys.discard(key)
            if not keys:
                del bucket[value]
        self._foreground.discard(key)
        self._encoded.pop(key, None)

    # ------------------------------------------------------------------ reads

    def keys_from(self, plural, namespace=None, after=None):
        """Keys of ``plural`` in (namespace, name) order, in ``namespace`` (None: all), past ``after``."""
        order = self._order.get(plural, [])
        start = 0 if namespace is None else bisect.bisect_left(order, (namespace,))
        if after is not None:
            start = max(start, bisect.bisect_right(order, tuple(after)))
        for i in range(start, len(order)):
            ns, name = order[i]
            if namespace is not None and ns != namespace:
                return
            yield plural, ns, name

    def matching(self, plural, namespace, labels_ok, after=None):
        """The stored objects (not copies) that ``labels_ok`` accepts, in key order."""
        for key in self.keys_from(plural, namespace, after):
            obj = dict.__getitem__(self, key)
            if labels_ok(obj["metadata"].get("labels")):
                yield obj

    def page(self, plural, namespace, labels_ok, after=None, limit=0):
        """(items' JSON bytes, key of the last item when more match, else None): at most ``limit``
        items (0: all), stopping at the first match past the page."""
        items, last = [], None
        for key in self.keys_from(plural, namespace, after):
            if not labels_ok(dict.__getitem__(self, key)["metadata"].get("labels")):
                continue
            if limit and len(items) == limit:
                return items, last
            items.append(self._encoded[key])
            last = key[1:]
        return items, None

    def count_after(self, plural, namespace, after) -> int:
        """How many objects of ``plural`` (in ``namespace``) sort after ``after`` (no selector)."""
        order = self._order.get(plural, [])
        end = len(order) if namespace is None else bisect.bisect_left(order, (namespace, chr(0x10FFFF)))
        return max(0, end - bisect.bisect_right(order, tuple(after)))

    def pods_of_job(self, meta) -> list:
        """Pods owned by the Job (ownerReferences uid) or carrying its job-name label (originals)."""
        namespace = meta["namespace"]
        keys = {k for k in self._by_owner.get(meta.get("uid"), ()) if k[0] == "pods" and k[1] == namespace}
        keys |= self._by_job_name.get((namespace, meta["name"]), set())
        return [dict.__getitem__(self, key) for key in sorted(keys)]

    def pods_labelled_for(self, namespace, job_name) -> list:
        """Pods carrying ``job_name`` in a job-name label (originals), in key order."""
        return [dict.__getitem__(self, key) for key in sorted(self._by_job_name.get((namespace, job_name), ()))]

    def owned_by(self, plural, namespace, uid) -> list:
        """Objects of ``plural`` in ``namespace`` naming ``uid`` among their owners (originals)."""
        return [dict.__getitem__(self, key) for key in sorted(self._by_owner.get(uid, ()))
                if key[0] == plural and key[1] == namespace]

    def has_uid(self, uid) -> bool:
        return uid in self._uids

    def foreground_jobs(self, namespace) -> list:
        """Jobs of ``namespace`` held by the foregroundDeletion finalizer (originals)."""
        return [dict.__getitem__(self, key) for key in sorted(self._foreground) if key[1] == namespace]


def list_body(kind: str, api_version: str, metadata: dict, items: list[bytes]) -> bytes:
    """A ``…List`` response from items already encoded: the same JSON as ``json.dumps`` of the dict."""
    head = json.dumps({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": []}).encode()
    return head[:-len(b"[]}")] + b"[" + b", ".join(items) + b"]}"
