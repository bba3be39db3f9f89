"""The relay: drains the outbox into the broker over one long-lived MQTT connection.

It reads the outbox in id order, RELAY_BATCH_SIZE rows per SELECT, and translates every
row of a batch into its broker work (access commands and publishes) before anything is
sent, so that a row that cannot be translated is known to be the culprit. It then sends
the rows through a sliding window: their access commands and QoS 1 publishes pipelined on
the one connection (the broker handles a connection's packets in order, so a grant is in
force before the publish that follows it), never more than RELAY_WINDOW rows sent and
not yet deleted, nor (a big group's rows) more than COPIES_IN_FLIGHT publishes. It waits for the older half of the window to be answered in full (every
command and publish of each of its rows), deletes that slice in one DELETE, and sends the
next half while the newer one is in flight (a batch is drained before the next SELECT,
so a window larger than the batch is the batch). If the connection drops or the broker
stalls (a slice not answered within RELAY_ACK_TIMEOUT), the answered prefix is deleted
and everything from the first unanswered row on stays queued, to be sent again once the
broker is back: delivery is at-least-once, in per-chat order, and clients drop
duplicates by message id. A relay killed outright resends at most the RELAY_WINDOW rows
it had sent and not deleted.

Why a window of rows and slices of half of it, not one batch acknowledged whole (as
before) nor a DELETE per acknowledgement: a whole batch of 500 was resent after every
kill, again and again while a backlog drained (3,517 copies too many for 5,251 messages,
two kills); a DELETE per row would make the good path one statement per message. A
slice costs one DELETE per RELAY_WINDOW/2 rows (the DELETE is plain SQL in autocommit:
Django's queryset delete wraps itself in BEGIN/COMMIT, three round trips), and the half
still in flight keeps the pipeline full while it runs (see RELAY_WINDOW in
chatserver/settings.py for the default). Measured on a backlog of 2,000 rows: 25
statements (5 SELECTs, 20 DELETEs; tests/chatserver/test_relay_window.py counts them)
where the whole-batch relay made 17 as it runs, in autocommit (5 SELECTs, and 4
DELETEs each between a BEGIN and a COMMIT; 9 inside a test's transaction),
and a 5,000-row backlog drained as fast as before, within the noise of the host.

One row never stops the others: a row that cannot be translated (an unknown access
operation, a bad user id, anything raised while building its work), or that the broker
refuses for good (a payload too large, a publish refused with an MQTT 5 failure reason,
a dynsec command failing for another reason than "already so"), is moved to the dead
letters (`chatserver.models.DeadLetter`) in the transaction that deletes its slice, and
logged at ERROR. The good path is one SELECT per batch and one DELETE per slice.

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
from django.db import connection
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
# MQTT 5 refusals that may pass (the broker is overloaded): the row and those after it
# are sent again rather than set aside.
TRANSIENT_REFUSALS = frozenset({"Server busy", "Quota exceeded"})

# The most publishes handed to paho and not answered (beyond the rows' window): paho
# keeps every one with a threading.Condition of its own until its PUBACK, 1.6 KB each
# (33 MB for 20,200, tracemalloc), and RELAY_WINDOW's 200 rows of a 100-member group are
# 20,200: the relay's RSS went from 76 to 102 MiB once a group's backlog built up
# (bench/results/20261201T175322Z). 2,000 is still 20 times what paho and the broker
# keep in flight (100), so the pipeline does not run dry; 1:1 rows (3 publishes) never
# reach it.
COPIES_IN_FLIGHT = 2000
Publish = tuple[str, bytes, bool]  # topic, payload, retain
OUTBOX_TABLE = OutboxEvent._meta.db_table
OUTBOX_ID = OutboxEvent._meta.pk.column


class Relay(Worker):
    name = "relay"
    lock_key = ADVISORY_LOCK_KEY
    listen = outbox.NOTIFY_CHANNEL
    # What the relay writes may be lost in a database crash without harm: a DELETE lost
    # means those rows are sent again (at-least-once; phones drop duplicates by id), a
    # heartbeat is written again within a second, a dead letter not committed is still in
    # the outbox and set aside again. So its commits do not wait for the disk (one flush
    # per slice on the good path otherwise).
    durable_commits = False
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
        # Wall time since which the broker has answered without a long gap (None: it
        # does not now); reported in the heartbeat.
        self.up_since = None
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
        """Send a batch through the window, deleting it slice by slice as the broker
        answers (setting aside the rows that could not be translated or that the broker
        refused). False if it stopped short (connection lost, broker stalled or busy):
        the rows from the first unanswered one on stay queued."""
        window = max(1, settings.RELAY_WINDOW)
        half = max(1, window // 2)
        failed: dict[int, str] = {}
        # Per row, in id order: (row, its pendings, its publishes' topics and pendings).
        sent: list[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]] = []
        work = []
        for row in rows:
            try:
                work.append((row, *self.translate(row)))
            except Exception as exc:  # whatever it is, it is this row's
                failed[row.id] = f"cannot translate: {type(exc).__name__}: {exc}"
                work.append((row, None, None))
        total = len(work)
        deleted = 0  # rows[:deleted] are out of the outbox
        while deleted < total:
            # Fill the window: never more than RELAY_WINDOW rows sent and not deleted, nor
            # (but for the first of them) more than COPIES_IN_FLIGHT publishes.
            copies = sum(len(published) for _, _, published in sent[deleted:])
            capped = False
            for row, commands, publishes in work[len(sent) : deleted + window]:
                if len(sent) > deleted and copies + len(publishes or ()) > COPIES_IN_FLIGHT:
                    capped = True
                    break
                sent.append(self.send_row(row, commands, publishes, failed))
                copies += len(publishes or ())
            # The older half of what is in flight (of the window, unless capped).
            end = deleted + max(1, (len(sent) - deleted) // 2) if capped else min(deleted + half, total)
            pendings = [pending for _, row_pendings, _ in sent[deleted:end] for pending in row_pendings]
            stopped = None
            if not self.wait_acknowledged(pendings) and (answered := self.answered(sent[deleted:end])) < end - deleted:
                end = deleted + answered
                stopped = f"broker did not answer row #{sent[end][0].id} in time; will resend from it"
            for index in range(deleted, end):
                row, _, published = sent[index]
                busy = next((p.error for _, p in published if p.error in TRANSIENT_REFUSALS), None)
                if busy:
                    end, stopped = index, f"broker busy ({busy}) at row #{row.id}; will resend from it"
                    break
                if refusals := self.refusals(sent[index]):
                    failed[row.id] = "broker refused: " + "; ".join(refusals)
            self.delete(rows[deleted:end], failed)
            if stopped:
                logger.warning("%s (%d rows of the batch left)", stopped, total - end)
                return False
            deleted = end
        return True

    def send_row(self, row: OutboxEvent, commands: list[Command] | None, publishes: list[Publish] | None,
                 failed: dict[int, str]) -> tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]:
        """Hand one row's work to the connection; a row already in `failed` sends nothing."""
        if commands is None or publishes is None:
            return row, [], []
        try:
            control = self.broker.control(commands) if commands else None
            published = [(topic, self.broker.publish(topic, data, retain=retain)) for topic, data, retain in publishes]
        except Exception as exc:  # paho refusing what it was given: this row's doing
            failed[row.id] = f"cannot send: {type(exc).__name__}: {exc}"
            return row, [], []
        pendings = [pending for _, pending in published]
        if control is not None:
            pendings.insert(0, control)
        return row, pendings, published

    def refusals(self, entry: tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]) -> list[str]:
        """What the broker refused for good of one answered row (none: it went through)."""
        _, pendings, published = entry
        refusals = [
            f"{command.get('command')}: {error}"
            for pending in pendings
            if pending.commands is not None
            for command, error in pending.result
            if error and not self.access.is_benign(command, error)
        ]
        refusals += [f"publish to {topic}: {pending.error}" for topic, pending in published if pending.error]
        return refusals

    @staticmethod
    def answered(entries: list[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]]) -> int:
        """How many of `entries`, from the first, the broker answered in full."""
        for count, (_, pendings, _) in enumerate(entries):
            if not all(pending.done for pending in pendings):
                return count
        return len(entries)

    def delete(self, rows: list[OutboxEvent], failed: dict[int, str]) -> None:
        """Take a slice out of the outbox in one statement; with dead letters among it, in
        the transaction that keeps them (`outbox.set_aside`)."""
        if not rows:
            return
        if any(row.id in failed for row in rows):
            outbox.set_aside(failed={row.id: failed[row.id] for row in rows if row.id in failed}, rows=rows)
            return
        # Not the queryset's delete(): it wraps itself in a transaction (three statements).
        placeholders = ", ".join(["%s"] * len(rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {connection.ops.quote_name(OUTBOX_TABLE)} "
                f"WHERE {connection.ops.quote_name(OUTBOX_ID)} IN ({placeholders})",
                [row.id for row in rows],
            )

    def wait_acknowledged(self, pendings: list[Pending]) -> bool:
        """Wait for the broker to answer all of `pendings`, for as long as it answers
        something at least every RELAY_ACK_TIMEOUT, refreshing the heartbeat meanwhile (a
        stalled slice is not a dead relay).

        The timeout is on silence, not on the whole wait: a broker working through a long
        queue (dynamic-security commands rewrite its whole JSON file, milliseconds each
        with thousands of accounts) is slow, not stalled, and sending the same work again
        would only lengthen its queue; a batch of sign-ups' grants was resent that way,
        growing each time, and never went through."""
        deadline = time.monotonic() + settings.RELAY_ACK_TIMEOUT
        while True:
            now = time.monotonic()
            if self.broker.wait(pendings, timeout=max(0.0, min(deadline - now, HEARTBEAT_EVERY))):
                return True
            if any(p.failed for p in pendings):
                return False
            answered = self.broker.last_answer
            if answered is not None:
                deadline = max(deadline, answered + settings.RELAY_ACK_TIMEOUT)
            if time.monotonic() >= deadline:
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
        answering = (connected and answered is not None
                     and now - answered <= outbox.BROKER_ANSWER_MAX_AGE.total_seconds())
        if not answering:
            self.up_since = None
        elif self.up_since is None:
            self.up_since = wall
        RelayStatus.objects.update_or_create(
            id=1,
            defaults={
                "broker_connected": connected,
                "heartbeat_at": wall,
                "broker_answered_at": None if answered is None else wall - timedelta(seconds=now - answered),
                "broker_up_since": self.up_since,
            },
        )
        self.last_heartbeat = now
        self.reported_connected = connected
