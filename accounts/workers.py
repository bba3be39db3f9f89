"""The presence worker (`manage.py worker presence`): devices' reports in, users' presence out.

Its own process, with its own database connection and its own MQTT connection (the
server's admin account, client id `chat-presence-<host>-<pid>`), subscribed to every
device's presence (`chat/presence/+/+`). paho's thread only queues the reports; the
worker's loop folds them (`PresenceTracker`) and applies what is due (`presence_apply`).

A device's `online`/`away` holds for two keepalives unless the device repeats it; when it
runs out, the worker clears the device's retained message, so that nothing stale is left
on the broker for the next start. On every (re)connection to the broker nothing known
from before is trusted for more than `RESTART_GRACE` seconds: the retained states the
broker hands over on subscribing hold that long only, and the users they belong to get a
`presence.probe` (QoS 0, on their user topic), which every connected device answers by
publishing its state again. Nor for less: nothing expires while the worker cannot hear
the broker, and a device whose report ran out meanwhile (a RabbitMQ node takes 5-15 s to
come back, more than a report lasts with a short keepalive) has those seconds to
reconnect and say so. So after a restart of this worker or of the broker, devices that
are not connected are offline within seconds, and connected ones never flicker.
Once the first connection has had `PRESENCE_SETTLE` seconds to deliver every retained
presence, users the database has online but no device reports present are set offline
(`presence_reset_absent`).

It also signs out, every `INACTIVE_SWEEP_EVERY` seconds, the devices of users made
inactive without a save (`QuerySet.update`, raw SQL: `inactive_devices_sign_out`; a save
does it itself, `User.save`). A chore of this worker rather than a process of its own:
it is one indexed query that finds nothing nearly always, on device rows this worker
already sweeps, and a worker of its own would be a whole Django process for it.

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
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from accounts.presence import (
    APPLY_BATCH,
    PresenceTracker,
    device_presence_hold,
    device_presence_store,
    device_state,
    is_device,
    presence_apply_many,
    presence_reset_absent,
    users_not_offline,
)
from accounts.services import inactive_devices_sign_out
from chatserver.broker_access import PRESENCE_FILTER, parse_presence_topic, presence_topic, user_topic
from chatserver.events import Event, EventType, check_against_contract
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
# After (re)connecting, how long what was known before, and what the broker had retained,
# holds unless the device repeats it (it is probed): with the expiry sweep and the 2 s
# damping, a device that is not connected is offline within 10 s of a restart.
RESTART_GRACE = 5.0
# A live `offline` decides its user's state once the connection it came on has stayed up
# this long after it: a stopping Mosquitto (2.0, SIGTERM) publishes every connected
# device's Last Will, then closes this worker's connection a moment later. Those Wills
# are the broker's doing, not the devices': held back, they are dropped with the
# connection, and the devices get RESTART_GRACE once it is back, like every device known
# before. The device itself counts as not connected at once (pushes wake it).
OFFLINE_SETTLE = 0.5
# How long one round waits for reports: throttled decisions (PresenceTracker's
# min_interval) fall due while nothing arrives, so the loop looks again this often.
IDLE_WAIT = 0.1
# How often devices whose report ran out are looked for.
EXPIRE_EVERY = 1.0
# How often devices of inactive users are looked for (see the module's docstring): a
# deactivation no save saw cuts the devices off at the broker within this (plus the relay).
INACTIVE_SWEEP_EVERY = 5.0
# A full batch of changes is applied at most this often (APPLY_BATCH / APPLY_EVERY: 1,000
# users a second).
APPLY_EVERY = 0.1


def _is_offline(payload: bytes) -> bool:
    """A device's `offline` (its Last Will, or said before a clean disconnect); not an
    empty payload (a cleared presence: logout)."""
    return bool(payload) and device_state(payload) == "offline"


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
        # When the connection in use went away (None: connected, or never connected).
        self.silent_since: float | None = None
        # Users probed on the current connection (see _probe).
        self.probed: set[int] = set()
        # Live `offline` reports waiting out OFFLINE_SETTLE: (user, client id) -> (when
        # received, report), oldest first.
        self.held_offline: dict[tuple[int, str], tuple[float, tuple]] = {}
        self.reconciled = False
        self.next_expiry = 0.0
        self.next_sweep = 0.0

    def activated(self) -> None:
        if not self.broker_started:
            logger.info("presence: broker %s", ", ".join(f"{host}:{port}" for host, port in self.broker.addresses))
            self.broker.connect(timeout=5.0)
            self.broker_started = True
        self.tracker.forget_applied()
        self.reconciled = False

    def step(self, *, session: Session) -> bool:
        self._sweep_inactive()
        if not self.broker.connected:
            # It reconnects by itself; reports wait in the broker's retained messages.
            # Nothing expires meanwhile: devices' refreshes cannot be heard.
            if self.connected_since is not None:
                self.silent_since = time.monotonic()
            self.connected_since = None
            self.stop.wait(0.05)
            return True
        if self.connected_since is None:
            self._connection_started()
        ttl = device_ttl()
        try:
            first = self.inbox.get(timeout=IDLE_WAIT)
        except queue.Empty:
            pass
        else:
            now = time.monotonic()
            self._receive(first, now=now, ttl=ttl)
            while True:
                try:
                    self._receive(self.inbox.get_nowait(), now=now, ttl=ttl)
                except queue.Empty:
                    break
        now = time.monotonic()
        self._settle_offline(now=now, ttl=ttl)
        if now >= self.next_expiry:
            gone = self.tracker.expire(now)
            if gone:
                logger.info("%d devices stopped refreshing their presence: offline", len(gone))
                # Their retained state must not outlive them (a later start would find it).
                for user_id, client_id in gone:
                    self.broker.publish(presence_topic(user_id, client_id), b"", retain=True)
            self.next_expiry = now + EXPIRE_EVERY
        seen = self.tracker.take_devices()
        if seen:
            # One clock reading for all: the devices seen in one round share their expiry,
            # so they are stored in one UPDATE per state (a burst of 1,000 is one statement).
            wall = self._clock()
            device_presence_store(states={
                device_id: (state, wall(until)) for device_id, (state, until) in seen.items()
            })
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

    def _sweep_inactive(self) -> None:
        """Sign out the devices of inactive users, every INACTIVE_SWEEP_EVERY (the database
        only: the relay cuts them off at the broker, whether or not this worker is
        connected to it)."""
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + INACTIVE_SWEEP_EVERY
        try:
            swept = inactive_devices_sign_out()
        except DATABASE_UNAVAILABLE:
            raise
        except Exception:
            # Presence must not stop for it; the next round tries again.
            logger.exception("devices of inactive users not signed out")
            return
        if swept:
            logger.warning("signed out %d devices of inactive users (deactivated without User.save)", swept)
            self.next_sweep = now  # maybe more than one batch

    def _connection_started(self) -> None:
        """A new connection to the broker (the first, or after the broker or the network
        went away): what was known from before holds RESTART_GRACE from now, no longer
        and, after a silence, no shorter (a device whose refresh was lost in it has that
        long to reconnect or answer the probe: it does not flicker offline because the
        broker took longer to come back than its report lasts).
        (The database first: if it is down, all of this is done again once it is back.)"""
        now = time.monotonic()
        wall = self._clock()
        device_presence_hold(until=wall(now + RESTART_GRACE), ran_out_since=wall(self.silent_since))
        self.connected_since, self.silent_since = now, None
        # Offlines that came just before the connection went: maybe the stopping broker's
        # (see OFFLINE_SETTLE); the devices are held and probed below, as all others.
        self.held_offline.clear()
        self.probed = set()
        for user_id in self.tracker.hold_until(now + RESTART_GRACE):
            self._probe(user_id)
        # And everyone the database has present, whom this process may know nothing of
        # (it just started): their phones answer within PRESENCE_SETTLE, before the users
        # nobody reports present are set offline. Mosquitto also hands over the retained
        # states (each probes its user); RabbitMQ 3.10 does not to a wildcard
        # subscription, and without this a connected phone went offline for a minute.
        for user_id in users_not_offline():
            self._probe(user_id)

    def _probe(self, user_id: int) -> None:
        """Ask the user's connected devices to publish their state again (once per user and
        connection; QoS 0: a device that is not connected is not asked later)."""
        if user_id in self.probed:
            return
        self.probed.add(user_id)
        event = Event(type=EventType.PRESENCE_PROBE, data={})
        check_against_contract(event)
        self.broker.publish(user_topic(user_id), event.encode().encode(), qos=0)

    @staticmethod
    def _clock():
        """A function turning times on the tracker's (monotonic) clock into datetimes for
        the database (None stays None), from one reading of both clocks."""
        wall_now, now = timezone.now(), time.monotonic()

        def wall(monotonic: float | None):
            return None if monotonic is None else wall_now + timedelta(seconds=monotonic - now)

        return wall

    def _receive(self, report: tuple, *, now: float, ttl: float) -> None:
        """A report off the inbox: observed now, except a live `offline`, whose user's state
        waits OFFLINE_SETTLE (a later report of the device replaces it; the device counts
        as not connected at once)."""
        _, user_id, client_id, payload, retained = report
        self.held_offline.pop((user_id, client_id), None)
        if _is_offline(payload) and not retained:
            self.tracker.disconnected(user_id, client_id)
            self.held_offline[(user_id, client_id)] = (now, report)
        else:
            self._observe(report, now=now, ttl=ttl)

    def _settle_offline(self, *, now: float, ttl: float) -> None:
        """Observe the held `offline`s whose connection stayed up OFFLINE_SETTLE after them."""
        while self.held_offline:
            device, (received, report) = next(iter(self.held_offline.items()))
            if now - received < OFFLINE_SETTLE:
                break
            del self.held_offline[device]
            self._observe(report, now=now, ttl=ttl)

    def _observe(self, report: tuple, *, now: float, ttl: float) -> None:
        topic, user_id, client_id, payload, retained = report
        if retained:
            if _is_offline(payload) and self.tracker.is_present(user_id, client_id):
                # A Will the broker published as it stopped (Mosquitto 2.0 does on SIGTERM,
                # for every connected device), or that fired while this worker could not
                # hear it: either way the device is held until RESTART_GRACE is up, as
                # every device known from before, and asked (it reconnects, or answers).
                self._probe(user_id)
                return
            # Kept by the broker from before this connection: maybe nobody is behind it.
            ttl = min(ttl, RESTART_GRACE)
        valid = self.tracker.observe(user_id, client_id, payload, now=now, ttl=ttl)
        if not valid and payload and is_device(user_id, client_id):
            # Not a state the server understands: nothing a device publishes besides its
            # state may be kept on the broker. The empty retained message clears it (and
            # is itself not retained).
            logger.warning("presence: %d bytes on %s are not a device state; cleared", len(payload), topic)
            self.broker.publish(topic, b"", retain=True)
        elif valid and retained and payload and self.tracker.is_present(user_id, client_id):
            self._probe(user_id)

    def _on_presence(self, topic: str, payload: bytes, retain: bool) -> None:
        parsed = parse_presence_topic(topic)
        if parsed is not None:
            self.inbox.put((topic, *parsed, payload, retain))
