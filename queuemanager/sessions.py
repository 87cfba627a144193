"""Sessions read from Redis first, PostgreSQL when Redis has not got them (issue #12).

Django's `cached_db` store, with two differences:

- a Redis error never fails a request: the session is read from (and written to) the database as
  before the cache existed, so an outage or a flush of Redis costs a query, not a login;
- an entry lives at most SESSION_CACHE_SECONDS, so a logout or session deletion whose cache delete
  could not reach Redis (during an outage) takes effect after that long at the latest.

The session is still looked up on every request (in Redis, or the database on a miss) and the user
is still loaded from the database by the authentication middleware, so deactivating a user or
changing a password takes effect on the next request as before.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.sessions.backends import cached_db

logger = logging.getLogger("django.contrib.sessions")


class SessionStore(cached_db.SessionStore):
    def _cache_ttl(self, expiry) -> int:
        return max(0, min(self.get_expiry_age(expiry=expiry), settings.SESSION_CACHE_SECONDS))

    def _cached(self, operation: str, *args, default=None):
        try:
            return getattr(self._cache, operation)(*args)
        except Exception as exc:  # Redis down or flushed: the database holds every session
            logger.warning("session cache %s failed (%s: %s); using the database", operation, type(exc).__name__, exc)
            return default

    def load(self):
        data = self._cached("get", self.cache_key)
        if data is not None:
            return data
        row = self._get_session_from_db()
        if not row:
            return {}
        data = self.decode(row.session_data)
        self._cached("set", self.cache_key, data, self._cache_ttl(row.expire_date))
        return data

    def exists(self, session_key):
        if session_key and self._cached("has_key", self.cache_key_prefix + session_key, default=False):
            return True
        return cached_db.DBStore.exists(self, session_key)

    def save(self, must_create=False):
        cached_db.DBStore.save(self, must_create)
        self._cached("set", self.cache_key, self._session, self._cache_ttl(None))

    def delete(self, session_key=None):
        cached_db.DBStore.delete(self, session_key)
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        self._cached("delete", self.cache_key_prefix + session_key)
