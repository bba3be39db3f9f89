"""The relay: drains the outbox into the broker over one long-lived MQTT connection.

For each batch of outbox rows, in id order: translate every row into its broker work
(access commands and publishes) before anything is sent, so that a row that cannot be
translated is known to be the culprit; send the rows' access commands and publish their
payloads at QoS 1, all pipelined on the one connection (the broker handles a
connection's packets in order, so a grant is in force before the publish that follows
it); then wait until the broker has acknowledged every publish and answered every
command, and only then delete the rows. If the connection drops or the broker stalls,
nothing is deleted and the whole batch is sent again once the broker is back: delivery
is at-least-once, in per-chat order, and clients drop duplicates by message id.

One row never stops the others: a row that cannot be translated (an unknown access
operation, a bad user id, anything raised while building its work), or that the broker
refuses for good (a payload too large, a publish refused with an MQTT 5 failure reason,
a dynsec command failing for another reason than "already so"), is moved to the dead
letters (`chatserver.models.DeadLetter`) in the transaction that deletes its batch, and
logged at ERROR. The good path stays one SELECT and one DELETE per batch.

It runs under `chatserver.workers.run` (`manage.py worker relay`, or `manage.py relay`),
which keeps exactly one relay active on PostgreSQL (per-chat order depends on it: a
second one stands by on an advisory lock), wakes it on PostgreSQL's NOTIFY (sent by
every transaction that writes to the outbox; SQLite is polled), and survives database
outages. Presence is another worker (`accounts.workers`).

The heartbeat row (`RelayStatus`, about every second) says when the broker last
*answered* the relay (a PUBACK, a command response, a CONNACK), not whether a socket is
open: a hung broker keeps its sockets open for a keepalive or more. Every
`HEARTBEAT_EVERY` the relay also publishes a probe (QoS 1, empty, to `PROBE_TOPIC`,
which no client may subscribe to; never more than one unanswered), so the answers keep
coming whenever the broker works, even with nothing to send; `/health/` calls the broker down once the last one is older than
`outbox.BROKER_ANSWER_MAX_AGE`.
"""

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from chatserver import ephemeral, outbox
from chatserver.broker_access import (
    SERVER_PUBLISH_FILTER,
    Command,
    DynsecAccess,
    access_op_from_json,
    chat_topic,
    user_topic,
)
from chatserver.models import OutboxEvent, RelayStatus
from chatserver.mqtt import Pending
from chatserver.workers import DATABASE_UNAVAILABLE, Session, Worker, broker_connection

logger = logging.getLogger("chatserver.relay")

HEARTBEAT_EVERY = 1.0
# What the relay publishes to, to hear from the broker while there is nothing to send:
# under the server's own publish grant, and no client may subscribe to it.
PROBE_TOPIC = SERVER_PUBLISH_FILTER.removesuffix("#") + "server/probe"
# Any 64-bit number only this program uses: the key of the "one relay" advisory lock.
ADVISORY_LOCK_KEY = 0x636861745F72656C  # "chat_rel"
# MQTT 5 refusals that may pass (the broker is overloaded): the batch is sent again
# rather than set aside.
TRANSIENT_REFUSALS = frozenset({"Server busy", "Quota exceeded"})

Publish = tuple[str, bytes, bool]  # topic, payload, retain


class Relay(Worker):
    name = "relay"
    lock_key = ADVISORY_LOCK_KEY
    listen = outbox.NOTIFY_CHANNEL
    also_listen = (ephemeral.CHANNEL,)

    def __init__(self, *, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self.poll_interval = settings.RELAY_POLL_INTERVAL
        self.access = DynsecAccess()
        self.broker = broker_connection(name="relay")
        self.broker_started = False
        self.active = False
        self.baseline_applied = False
        self.last_heartbeat = float("-inf")
        self.reported_connected: bool | None = None
        self.probe_pending: Pending | None = None
        self.probe_sent = float("-inf")
        # While set, the outbox was empty at the last look: the next one is then.
        self.idle_until: float | None = None
        self.ephemeral = ephemeral.Gate()

    # --- the worker -----------------------------------------------------------------

    def activated(self) -> None:
        if not self.broker_started:
            logger.info("broker %s:%s", settings.MQTT_HOST, settings.MQTT_PORT)
            self.broker.connect(timeout=5.0)
            self.broker_started = True
        # Whatever happened while this relay was not active (rows queued unheard, its
        # heartbeat gone stale), look and report at once.
        self.reported_connected = None
        self.idle_until = None
        self.active = True

    def deactivated(self) -> None:
        # Another relay may be the active one now: the heartbeat is its to write.
        self.active = False

    def step(self, *, session: Session) -> bool:
        """One round: False when it could not make progress (the caller backs off)."""
        connected = self.broker.connected
        self.heartbeat(connected=connected)
        if not connected:
            # The connection reconnects by itself; look again soon, without backing off,
            # so that delivery resumes within moments of the broker's return.
            self.baseline_applied = False
            self.stop.wait(0.05)
            return True
        if not self.baseline_applied:
            pending = self.broker.control(self.access.baseline())
            if not self.broker.wait([pending], timeout=settings.RELAY_ACK_TIMEOUT):
                return False
            for command, error in pending.result:
                if error and not self.access.is_benign(command, error):
                    logger.error("broker refused %s: %s", command.get("command"), error)
            self.baseline_applied = True
        self.probe()
        self.publish_ephemeral(self.ephemeral.due())
        if self.idle_until is not None:
            # Idle: wait for a NOTIFY, keeping the heartbeat fresh meanwhile, and look at
            # the table anyway once RELAY_IDLE_RECHECK has passed.
            remaining = self.idle_until - time.monotonic()
            held = self.ephemeral.next_due_in()
            if remaining > 0 and not session.wait(min(remaining, HEARTBEAT_EVERY, held if held is not None else HEARTBEAT_EVERY)):
                return True
            self.idle_until = None
        rows = list(OutboxEvent.objects.order_by("id")[: settings.RELAY_BATCH_SIZE])
        if not rows:
            self.idle_until = time.monotonic() + settings.RELAY_IDLE_RECHECK
            return True
        return self.send(rows)

    def close(self) -> None:
        try:
            if self.active:  # a standby's "not connected" would hide the active relay's
                self.heartbeat(force=True, connected=False)
        except DATABASE_UNAVAILABLE:
            pass  # the heartbeat goes stale by itself
        finally:
            self.broker.close()

    # --- ephemeral events (typing): NOTIFY in, QoS 0 out, never stored -----------------

    def on_notify(self, channel: str, payload: str) -> None:
        """An ephemeral event from a web process (`chatserver.ephemeral`): published now at
        QoS 0 if its gate lets it through; a payload that is not one is logged and dropped."""
        try:
            publishes = self.ephemeral.receive(payload)
        except ValueError as exc:
            logger.error("ephemeral notification dropped: %s", exc)
            return
        self.publish_ephemeral(publishes)

    def wake_in(self) -> float | None:
        # A state held by the gate is due then: the idle wait ends for it.
        return self.ephemeral.next_due_in()

    def publish_ephemeral(self, publishes: list[tuple[str, bytes]]) -> None:
        for topic, data in publishes:
            if not topic.startswith(ephemeral.TOPIC_PREFIXES):
                logger.error("ephemeral publish to %s refused: not an event topic", topic)
                continue
            # QoS 0: nobody waits for it, and the broker queues it for no offline session.
            self.broker.publish(topic, data, qos=0)

    # --- one batch ------------------------------------------------------------------

    def translate(self, row: OutboxEvent) -> tuple[list[Command], list[Publish]]:
        """The broker work of one row: its commands, then its publishes, in order.
        Raises (anything) if the row is not one the relay can handle."""
        if not isinstance(row.access, list):
            raise ValueError(f"access must be a list, got {row.access!r}")
        ops = [access_op_from_json(op) for op in row.access]
        commands = [c for op in ops for c in self.access.commands(op)]
        publishes = [(topic, payload, True) for op in ops for topic, payload in self.access.publishes(op)]
        if row.payload:
            if not isinstance(row.user_ids, list):
                raise ValueError(f"user_ids must be a list, got {row.user_ids!r}")
            data = row.payload.encode()
            publishes += [(user_topic(user_id), data, False) for user_id in row.user_ids]
            if row.chat_id is not None:
                publishes.append((chat_topic(row.chat_id), data, False))
        return commands, publishes

    def send(self, rows: list[OutboxEvent]) -> bool:
        """Send a batch and delete it once the broker acknowledged all of it (setting
        aside the rows that could not be translated or that the broker refused)."""
        failed: dict[int, str] = {}
        work = []
        for row in rows:
            try:
                work.append((row, *self.translate(row)))
            except Exception as exc:  # whatever it is, it is this row's
                failed[row.id] = f"cannot translate: {type(exc).__name__}: {exc}"
        sent: list[tuple[OutboxEvent, Pending | None, list[tuple[str, Pending]]]] = []
        pendings: list[Pending] = []
        for row, commands, publishes in work:
            try:
                control = self.broker.control(commands) if commands else None
                published = [
                    (topic, self.broker.publish(topic, data, retain=retain)) for topic, data, retain in publishes
                ]
            except Exception as exc:  # paho refusing what it was given: this row's doing
                failed[row.id] = f"cannot send: {type(exc).__name__}: {exc}"
                continue
            sent.append((row, control, published))
            if control is not None:
                pendings.append(control)
            pendings.extend(pending for _, pending in published)
        if not self.wait_acknowledged(pendings):
            logger.warning("broker did not acknowledge a batch of %d rows; will resend", len(rows))
            return False
        for row, control, published in sent:
            refusals = []
            if control is not None:
                refusals += [
                    f"{command.get('command')}: {error}"
                    for command, error in control.result
                    if error and not self.access.is_benign(command, error)
                ]
            for topic, pending in published:
                if pending.error in TRANSIENT_REFUSALS:
                    logger.warning("broker busy (%s on %s); will resend the batch", pending.error, topic)
                    return False
                if pending.error:
                    refusals.append(f"publish to {topic}: {pending.error}")
            if refusals:
                failed[row.id] = "broker refused: " + "; ".join(refusals)
        if failed:
            outbox.set_aside(failed=failed, rows=rows)
        else:
            OutboxEvent.objects.filter(id__in=[row.id for row in rows]).delete()
        return True

    def wait_acknowledged(self, pendings: list[Pending]) -> bool:
        """Wait up to RELAY_ACK_TIMEOUT for the broker to answer all of `pendings`,
        refreshing the heartbeat meanwhile (a stalled batch is not a dead relay)."""
        deadline = time.monotonic() + settings.RELAY_ACK_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if self.broker.wait(pendings, timeout=max(0.0, min(remaining, HEARTBEAT_EVERY))):
                return True
            if remaining <= HEARTBEAT_EVERY or any(p.failed for p in pendings):
                return False
            self.heartbeat(connected=self.broker.connected)

    def probe(self) -> None:
        """Publish a probe if none is outstanding and the last went out HEARTBEAT_EVERY
        ago; its PUBACK is an answer (`BrokerConnection.last_answer`). Never waits."""
        now = time.monotonic()
        if self.probe_pending is not None and not self.probe_pending.finished:
            return  # unanswered yet: a hung broker does not get a pile of them
        if now - self.probe_sent < HEARTBEAT_EVERY:
            return
        self.probe_sent = now
        self.probe_pending = self.broker.publish(PROBE_TOPIC, b"")

    def heartbeat(self, *, connected: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not force and connected == self.reported_connected and now - self.last_heartbeat < HEARTBEAT_EVERY:
            return
        if connected != self.reported_connected:
            logger.info("broker %s", "connected" if connected else "not connected")
        wall = timezone.now()
        answered = self.broker.last_answer
        RelayStatus.objects.update_or_create(
            id=1,
            defaults={
                "broker_connected": connected,
                "heartbeat_at": wall,
                "broker_answered_at": None if answered is None else wall - timedelta(seconds=now - answered),
            },
        )
        self.last_heartbeat = now
        self.reported_connected = connected
