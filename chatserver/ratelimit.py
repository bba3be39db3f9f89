"""Rate limits shared by every web process on every host: buckets in the database, or in
Redis when REDIS_URL is set. DRF's throttles on top of them: chatserver/throttling.py.

Each limit is a bucket in the manner of GCRA (the generic cell rate algorithm): `rate`
requests per `period` sustained, `burst` of them at once. One number per bucket, its
"theoretical arrival time" `tat`: a request at `now` is allowed if
`max(tat, now) + interval - now <= burst * interval` (interval = period / rate), and
then moves `tat` on by one interval. So a fresh bucket lets exactly `burst` requests
through at once, then one per interval; a refused request changes nothing, and says how
long to wait (`retry_after`).

Why not Django's cache with DRF's stock throttles: those read a history, append and
write it back, so concurrent requests on two workers both pass (the limit is not the
limit), and Django's database cache counts its whole table and may cull live entries
on every write. Here one request is one atomic round trip: an upsert with a condition
(`INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING`, PostgreSQL and SQLite alike),
or one Lua script in Redis. Times come from the web process's clock (hosts keep time
with NTP; a skew of a second moves a bucket by a second).

On PostgreSQL the table is UNLOGGED (migration chatserver 0008): the upsert commits on
its own, and a transaction that wrote only unlogged tables does not wait for a WAL flush,
which was half of a message POST's fsync wait. A crash (not a clean restart) empties it,
and a replica does not have it: every bucket is full again, once; the limits damp abuse,
they keep no account.

Redis going away does not take the API down: a limit that cannot be checked lets the
request through (fail open), logged at WARNING at most every `REDIS_RETRY_AFTER` s, and
Redis is not asked again for that long. The database store needs no such rule: without
the database no request gets this far (token authentication reads it first).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from chatserver.models import RateBucket
from chatserver.prepared import prepared_cursor

logger = logging.getLogger("chatserver.ratelimit")

# After Redis failed, how long requests pass unchecked before it is tried again.
REDIS_RETRY_AFTER = 5.0
# Each take has this chance to delete the database's refilled buckets (equivalent to
# none): the table holds about what the last minutes' callers used.
PURGE_CHANCE = 0.001


@dataclass(frozen=True)
class Limit:
    """`rate` requests per `period` seconds, `burst` at once."""

    rate: int
    period: float
    burst: int

    @property
    def interval(self) -> float:
        return self.period / self.rate

    @property
    def tolerance(self) -> float:
        return self.burst * self.interval

    def wait(self, tat: float, now: float) -> float:
        """Seconds until a refused request would pass, for a bucket at `tat`. Never more
        than one interval: a `tat` set by a concurrent request that read the clock later
        than this one would otherwise add the difference."""
        return min(self.interval, max(0.0, tat + self.interval - self.tolerance - now))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until a request would pass (0 when allowed)


def take(key: str, limit: Limit) -> Decision:
    """Count one request against bucket `key`; refused requests are not counted."""
    return _store().take(key, limit, time.time())


def peek(key: str, limit: Limit) -> Decision:
    """Whether a request would pass bucket `key` now, counting nothing (one read)."""
    return _store().peek(key, limit, time.time())


def give_back(key: str, limit: Limit) -> None:
    """Undo one counted request (a login that turned out right does not count as failed)."""
    _store().give_back(key, limit)


def _verdict(tat: float | None, limit: Limit, now: float) -> Decision:
    if tat is None or max(tat, now) + limit.interval - now <= limit.tolerance:
        return Decision(True, 0.0)
    return Decision(False, limit.wait(tat, now))


def _store() -> DatabaseBuckets | RedisBuckets:
    return _redis_buckets() if settings.REDIS_URL else DATABASE


# --- the database ---------------------------------------------------------------------

_T = RateBucket._meta.db_table
_TAKE = f"""
    INSERT INTO {_T} AS b (key, tat) VALUES (%(key)s, %(now)s + %(interval)s)
    ON CONFLICT (key) DO UPDATE
        SET tat = (CASE WHEN b.tat > %(now)s THEN b.tat ELSE %(now)s END) + %(interval)s
        WHERE (CASE WHEN b.tat > %(now)s THEN b.tat ELSE %(now)s END) + %(interval)s - %(now)s <= %(tolerance)s
    RETURNING tat
"""


class DatabaseBuckets:
    def take(self, key: str, limit: Limit, now: float) -> Decision:
        params = {"key": key, "now": now, "interval": limit.interval, "tolerance": limit.tolerance}
        # Prepared (chatserver.prepared): one per message POST.
        with prepared_cursor() as cursor:
            cursor.execute(_TAKE, params)
            if cursor.fetchone() is not None:
                if random.random() < PURGE_CHANCE:
                    cursor.execute(f"DELETE FROM {_T} WHERE tat < %s", [now])
                return Decision(True, 0.0)
            # Refused (the row is unchanged): read it once to say how long to wait.
            cursor.execute(f"SELECT tat FROM {_T} WHERE key = %s", [key])
            row = cursor.fetchone()
        tat = row[0] if row else now
        return Decision(False, limit.wait(tat, now))

    def peek(self, key: str, limit: Limit, now: float) -> Decision:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT tat FROM {_T} WHERE key = %s", [key])
            row = cursor.fetchone()
        return _verdict(row[0] if row else None, limit, now)

    def give_back(self, key: str, limit: Limit) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {_T} SET tat = tat - %s WHERE key = %s", [limit.interval, key])


DATABASE = DatabaseBuckets()


# --- Redis ----------------------------------------------------------------------------

# KEYS[1] the bucket; ARGV now, interval, tolerance. Returns {allowed, tat} (tat as a
# string: Redis turns Lua numbers into integers). The key expires when the bucket is
# full again, which is the same as no key.
_LUA_TAKE = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local new = math.max(tat, now) + interval
if new - now > tolerance then
    return {0, tostring(tat)}
end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000))
return {1, tostring(new)}
"""
_LUA_GIVE_BACK = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > 0 then redis.call('SET', KEYS[1], tostring(tat - tonumber(ARGV[1])), 'KEEPTTL') end
return 0
"""


class RedisBuckets:
    """Buckets in Redis (`REDIS_URL`), failing open while Redis does not answer."""

    def __init__(self, url: str) -> None:
        import redis

        self.errors = (redis.RedisError, OSError)
        # Short timeouts: a hung Redis must not hold requests for long.
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._take = self.client.register_script(_LUA_TAKE)
        self._give_back = self.client.register_script(_LUA_GIVE_BACK)
        self.down_until = 0.0
        self.prefix = f"{settings.RATELIMIT_KEY_PREFIX}:"

    def take(self, key: str, limit: Limit, now: float) -> Decision:
        if time.monotonic() < self.down_until:
            return Decision(True, 0.0)
        try:
            allowed, tat = self._take(keys=[self.prefix + key], args=[repr(now), repr(limit.interval),
                                                                      repr(limit.tolerance)])
        except self.errors as exc:
            self._failed(exc)
            return Decision(True, 0.0)
        if allowed:
            return Decision(True, 0.0)
        return Decision(False, limit.wait(float(tat), now))

    def peek(self, key: str, limit: Limit, now: float) -> Decision:
        if time.monotonic() < self.down_until:
            return Decision(True, 0.0)
        try:
            tat = self.client.get(self.prefix + key)
        except self.errors as exc:
            self._failed(exc)
            return Decision(True, 0.0)
        return _verdict(None if tat is None else float(tat), limit, now)

    def give_back(self, key: str, limit: Limit) -> None:
        if time.monotonic() < self.down_until:
            return
        try:
            self._give_back(keys=[self.prefix + key], args=[repr(limit.interval)])
        except self.errors as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.down_until = time.monotonic() + REDIS_RETRY_AFTER
        logger.warning("rate limits unchecked for %.0f s: Redis failed: %s: %s",
                       REDIS_RETRY_AFTER, type(exc).__name__, exc)


_redis_lock = threading.Lock()
_redis: dict[str, RedisBuckets] = {}


def _redis_buckets() -> RedisBuckets:
    url = settings.REDIS_URL
    with _redis_lock:
        if url not in _redis:
            _redis[url] = RedisBuckets(url)
        return _redis[url]
