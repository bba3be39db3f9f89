"""The relay: drains the outbox into the broker over one long-lived MQTT connection.

For each batch of outbox rows, in id order: send the rows' broker access commands and
publish their payloads at QoS 1, all pipelined on the one connection (the broker handles
a connection's packets in order, so a grant is in force before the publish that follows
it); then wait until the broker has acknowledged every publish and answered every
command, and only then delete the rows. If the connection drops or the broker stalls,
nothing is deleted and the whole batch is sent again once the broker is back: delivery
is at-least-once, in per-chat order, and clients drop duplicates by message id.

Exactly one relay works at a time (per-chat order depends on it): on PostgreSQL a second
one waits on an advisory lock as a hot standby. It wakes on PostgreSQL's NOTIFY, sent by
every transaction that writes to the outbox, and polls on SQLite.
"""

import logging
import os
import queue
import signal
import socket
import threading
import time

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from accounts.presence import PresenceTracker, presence_apply, presence_reset_absent
from chatserver.broker_access import (
    PRESENCE_FILTER,
    DynsecAccess,
    access_op_from_json,
    chat_topic,
    parse_presence_topic,
    user_topic,
)
from chatserver.models import OutboxEvent, RelayStatus
from chatserver.mqtt import BrokerConnection
from chatserver.outbox import NOTIFY_CHANNEL

logger = logging.getLogger("chatserver.relay")

HEARTBEAT_EVERY = 1.0
# Back-off after a failed batch or a database error, doubling up to the cap.
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0
# Any 64-bit number only this program uses: the key of the "one relay" advisory lock.
ADVISORY_LOCK_KEY = 0x636861745F72656C  # "chat_rel"
# After (re)connecting, the broker sends every retained presence at once; once this long
# has passed, users the database has online but no device reported are set offline.
PRESENCE_SETTLE = 2.0


class Wakeup:
    """Waits for new outbox rows: LISTEN/NOTIFY on PostgreSQL, a short sleep elsewhere."""

    def __init__(self) -> None:
        self.listener = None

    def open(self) -> None:
        if connection.vendor != "postgresql":
            return
        import psycopg

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        self.listener = psycopg.connect(**params, autocommit=True)
        self.listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def take_lock(self, stop: threading.Event) -> None:
        """Block until this relay holds the one-relay lock (PostgreSQL only)."""
        if self.listener is None:
            return
        announced = False
        while not stop.is_set():
            (held,) = self.listener.execute(
                "SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY]
            ).fetchone()
            if held:
                return
            if not announced:
                logger.info("another relay is active; standing by")
                announced = True
            stop.wait(2.0)

    def wait(self, timeout: float) -> None:
        if self.listener is None:
            time.sleep(min(timeout, settings.RELAY_POLL_INTERVAL))
            return
        for _ in self.listener.notifies(timeout=timeout, stop_after=1):
            pass
        # Drain whatever else arrived: one look at the table serves them all.
        for _ in self.listener.notifies(timeout=0):
            pass

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


class Relay:
    def __init__(self, *, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self.access = DynsecAccess()
        self.broker = BrokerConnection(
            host=settings.MQTT_HOST,
            port=settings.MQTT_PORT,
            username=settings.MQTT_ADMIN_USERNAME,
            password=settings.MQTT_ADMIN_PASSWORD,
            client_id=f"chat-relay-{socket.gethostname()}-{os.getpid()}",
            keepalive=settings.MQTT_KEEPALIVE,
        )
        self.wakeup = Wakeup()
        # Presence reports arrive on paho's thread; the loop applies them.
        self.presence = PresenceTracker()
        self.presence_inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.broker.subscribe(PRESENCE_FILTER, self._on_presence)
        self.connected_since: float | None = None
        self.presence_reconciled = False
        self.baseline_applied = False
        self.last_heartbeat = 0.0
        self.reported_connected: bool | None = None

    # --- the loop -------------------------------------------------------------------

    def run(self) -> None:
        self.wakeup.open()
        self.wakeup.take_lock(self.stop)
        logger.info("relay active; broker %s:%s", settings.MQTT_HOST, settings.MQTT_PORT)
        self.broker.connect(timeout=5.0)
        backoff = BACKOFF_FIRST
        try:
            while not self.stop.is_set():
                try:
                    done = self.step()
                except DatabaseError:
                    logger.exception("database error; retrying")
                    close_old_connections()
                    connection.close()
                    done = False
                if done:
                    backoff = BACKOFF_FIRST
                else:
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP)
        finally:
            self.heartbeat(force=True, connected=False)
            self.broker.close()
            self.wakeup.close()

    def step(self) -> bool:
        """One round: False when it could not make progress (the caller backs off)."""
        connected = self.broker.connected
        self.heartbeat(connected=connected)
        if not connected:
            # The connection reconnects by itself; look again soon, without backing off,
            # so that delivery resumes within moments of the broker's return.
            self.baseline_applied = False
            self.connected_since = None
            self.stop.wait(0.05)
            return True
        if self.connected_since is None:
            self.connected_since = time.monotonic()
        self.presence_step()
        if not self.baseline_applied:
            pending = self.broker.control(self.access.baseline())
            if not self.broker.wait([pending], timeout=settings.RELAY_ACK_TIMEOUT):
                return False
            self._log_command_errors(pending.result)
            self.baseline_applied = True
        rows = list(OutboxEvent.objects.order_by("id")[: settings.RELAY_BATCH_SIZE])
        if not rows:
            self.wakeup.wait(settings.RELAY_IDLE_RECHECK)
            return True
        return self.send(rows)

    def send(self, rows: list[OutboxEvent]) -> bool:
        """Send a batch and delete it once the broker acknowledged all of it."""
        pendings, controls = [], []
        for row in rows:
            ops = [access_op_from_json(op) for op in row.access]
            commands = [c for op in ops for c in self.access.commands(op)]
            if commands:
                pending = self.broker.control(commands)
                pendings.append(pending)
                controls.append(pending)
            for op in ops:
                for topic, payload in self.access.publishes(op):
                    pendings.append(self.broker.publish(topic, payload, retain=True))
            if row.payload:
                data = row.payload.encode()
                for user_id in row.user_ids:
                    pendings.append(self.broker.publish(user_topic(user_id), data))
                if row.chat_id is not None:
                    pendings.append(self.broker.publish(chat_topic(row.chat_id), data))
        if not self.broker.wait(pendings, timeout=settings.RELAY_ACK_TIMEOUT):
            logger.warning("broker did not acknowledge a batch of %d rows; will resend", len(rows))
            return False
        for pending in controls:
            self._log_command_errors(pending.result)
        OutboxEvent.objects.filter(id__in=[row.id for row in rows]).delete()
        return True

    def _on_presence(self, topic: str, payload: bytes, retain: bool) -> None:
        parsed = parse_presence_topic(topic)
        if parsed is not None:
            self.presence_inbox.put((*parsed, payload))

    def presence_step(self) -> None:
        """Fold the device reports that came in, and apply the users' changes that are due."""
        while True:
            try:
                user_id, client_id, payload = self.presence_inbox.get_nowait()
            except queue.Empty:
                break
            self.presence.observe(user_id, client_id, payload)
        for user_id, state in self.presence.due(time.monotonic()):
            presence_apply(user_id=user_id, presence=state)
        settled = time.monotonic() - self.connected_since >= PRESENCE_SETTLE
        if not self.presence_reconciled and settled:
            stale = presence_reset_absent(present=self.presence.known_present())
            if stale:
                logger.info("set %d users offline that no device reports present", len(stale))
            self.presence_reconciled = True

    def _log_command_errors(self, results) -> None:
        # A command that failed for another reason than "already so" will not succeed by
        # being sent again; it is logged, and the row is not allowed to block the outbox.
        for command, error in results:
            if error and not self.access.is_benign(command, error):
                logger.error("broker refused %s: %s", command.get("command"), error)

    def heartbeat(self, *, connected: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not force and connected == self.reported_connected and now - self.last_heartbeat < HEARTBEAT_EVERY:
            return
        if connected != self.reported_connected:
            logger.info("broker %s", "connected" if connected else "not connected")
        RelayStatus.objects.update_or_create(
            id=1, defaults={"broker_connected": connected, "heartbeat_at": timezone.now()}
        )
        self.last_heartbeat = now
        self.reported_connected = connected


def run_forever() -> None:
    stop = threading.Event()

    def on_signal(signum, frame):
        logger.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Relay(stop=stop).run()
