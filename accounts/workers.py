"""The presence worker (`manage.py worker presence`): devices' reports in, users' presence out.

Its own process, with its own database connection and its own MQTT connection (the
server's admin account, client id `chat-presence-<host>-<pid>`), subscribed to every
device's presence (`chat/presence/+/+`). paho's thread only queues the reports; the
worker's loop folds them (`PresenceTracker`) and applies what is due (`presence_apply`).
Once its first broker connection has had `PRESENCE_SETTLE` seconds to deliver every
retained presence, users the database has online but no device reports present are set
offline (`presence_reset_absent`), so nobody stays stuck online after a restart.

Exactly one is active (its state is in memory): on PostgreSQL others stand by on the
advisory lock `ADVISORY_LOCK_KEY`. Each time it becomes active again (after a database
outage, or taking over) it decides every user again and reconciles again: decisions lost
in the outage, or made meanwhile by another worker, are made again, and `presence_apply`
only acts on real changes.
"""

import logging
import queue
import threading
import time

from django.conf import settings

from accounts.presence import (
    APPLY_BATCH,
    PresenceTracker,
    device_presence_store,
    is_device,
    presence_apply_many,
    presence_reset_absent,
)
from chatserver.broker_access import PRESENCE_FILTER, parse_presence_topic
from chatserver.workers import DATABASE_UNAVAILABLE, Session, Worker, broker_connection

logger = logging.getLogger("accounts.presence")


def device_ttl() -> float:
    """How long a device's `online`/`away` holds without a refresh: devices republish it
    every keepalive (`mqtt.keepalive` of their session), so two of them missed means
    the device is gone, whether or not its Will came."""
    return 2.0 * settings.MQTT_KEEPALIVE

# Any 64-bit number only this program uses: the key of the "one presence worker" lock.
ADVISORY_LOCK_KEY = 0x636861745F707265  # "chat_pre"
# After (re)connecting, the broker sends every retained presence at once; once this long
# has passed, users the database has online but no device reported are set offline.
PRESENCE_SETTLE = 2.0
# How long one round waits for reports: throttled decisions (PresenceTracker's
# min_interval) fall due while nothing arrives, so the loop looks again this often.
IDLE_WAIT = 0.1
# How often devices whose report ran out are looked for.
EXPIRE_EVERY = 1.0
# A full batch of changes is applied at most this often (APPLY_BATCH / APPLY_EVERY: 1,000
# users a second).
APPLY_EVERY = 0.1


class PresenceWorker(Worker):
    name = "presence"
    lock_key = ADVISORY_LOCK_KEY

    def __init__(self, *, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self.broker = broker_connection(name="presence")
        self.tracker = PresenceTracker()
        # Reports arrive on paho's thread; the loop applies them.
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.broker.subscribe(PRESENCE_FILTER, self._on_presence)
        self.broker_started = False
        self.connected_since: float | None = None
        self.reconciled = False
        self.next_expiry = 0.0

    def activated(self) -> None:
        if not self.broker_started:
            logger.info("presence: broker %s:%s", settings.MQTT_HOST, settings.MQTT_PORT)
            self.broker.connect(timeout=5.0)
            self.broker_started = True
        self.tracker.forget_applied()
        self.reconciled = False

    def step(self, *, session: Session) -> bool:
        if not self.broker.connected:
            # It reconnects by itself; reports wait in the broker's retained messages.
            self.connected_since = None
            self.stop.wait(0.05)
            return True
        if self.connected_since is None:
            self.connected_since = time.monotonic()
        ttl = device_ttl()
        try:
            first = self.inbox.get(timeout=IDLE_WAIT)
        except queue.Empty:
            pass
        else:
            now = time.monotonic()
            self._observe(first, now=now, ttl=ttl)
            while True:
                try:
                    self._observe(self.inbox.get_nowait(), now=now, ttl=ttl)
                except queue.Empty:
                    break
        now = time.monotonic()
        if now >= self.next_expiry:
            gone = self.tracker.expire(now)
            if gone:
                logger.info("%d devices stopped refreshing their presence: offline", gone)
            self.next_expiry = now + EXPIRE_EVERY
        seen = self.tracker.take_devices()
        if seen:
            device_presence_store(states=seen, ttl=ttl)
        # At most one batch a round, and a round at most every APPLY_EVERY: a burst of
        # phones connecting is told over a second or two (presence is damped by 2 s
        # anyway) instead of flooding the outbox ahead of the messages.
        due = self.tracker.due(time.monotonic(), limit=APPLY_BATCH)
        if len(due) == APPLY_BATCH:
            self.stop.wait(APPLY_EVERY)
        try:
            presence_apply_many(changes=due)
        except DATABASE_UNAVAILABLE:
            raise  # decided again once the database is back (see activated)
        except Exception:
            # One bad user must not cost the others theirs: one by one, then.
            for user_id, state in due:
                try:
                    presence_apply_many(changes=[(user_id, state)])
                except DATABASE_UNAVAILABLE:
                    raise
                except Exception:
                    logger.exception("presence of user %s not applied", user_id)
        if not self.reconciled and time.monotonic() - self.connected_since >= PRESENCE_SETTLE:
            stale = presence_reset_absent(present=self.tracker.known_present())
            if stale:
                logger.info("set %d users offline that no device reports present", len(stale))
            self.reconciled = True
        return True

    def close(self) -> None:
        self.broker.close()

    def _observe(self, report: tuple, *, now: float, ttl: float) -> None:
        topic, user_id, client_id, payload = report
        valid = self.tracker.observe(user_id, client_id, payload, now=now, ttl=ttl)
        if not valid and payload and is_device(user_id, client_id):
            # Not a state the server understands (or not a device's topic): nothing a
            # device publishes besides its state may be kept on the broker. The empty
            # retained message clears it (and is itself not retained).
            logger.warning("presence: %d bytes on %s are not a device state; cleared", len(payload), topic)
            self.broker.publish(topic, b"", retain=True)

    def _on_presence(self, topic: str, payload: bytes, retain: bool) -> None:
        parsed = parse_presence_topic(topic)
        if parsed is not None:
            self.inbox.put((topic, *parsed, payload))
