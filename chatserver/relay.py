"""The relay: drains the outbox into the broker over one long-lived MQTT connection.

It reads the outbox in id order, RELAY_BATCH_SIZE rows per SELECT, and translates each
row into its broker work (access commands and publishes) as the window reaches it (a row
that cannot be translated is set aside by itself, the rows around it go on; only what is
in flight is held: a 100-member group's batch is 50,500 publishes). It sends the rows
through a sliding window: their access commands and QoS 1 publishes pipelined on
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

Access work that does not go over the MQTT connection (`access.applies(op)`: on
RabbitMQ, revocations over its management API, chatserver/rabbit_access.py) is done by
`access.apply`, synchronously, once everything sent before the row is answered and
before anything of it or after it is sent: so it sits in outbox order like a dynsec
command. While it cannot be done (the API does not answer), the row and everything after
it stay queued; refused for good, the row is set aside. The relay does not know which
broker it has (`workers.broker_access`, settings.BROKER).

It runs under `chatserver.workers.run` (`manage.py worker relay`, or `manage.py relay`),
which keeps exactly one relay active per partition on PostgreSQL (per-chat order depends
on it: a relay started when every partition has one stands by on the advisory locks),
wakes it on PostgreSQL's NOTIFY (sent by every transaction that writes to the outbox;
SQLite is polled), and survives database outages. Presence is another worker
(`accounts.workers`).

Partitions (RELAY_PARTITIONS=N, default 1): the relay holding lock k (ADVISORY_LOCK_KEY
+ k, the first free one) sends the rows of partition k only (`OutboxEvent.partition`,
`partition_key % N`: a chat's rows have the chat's key, a user's the user's, see
`outbox.partition_key`), in id order, writes heartbeat row k + 1, and publishes the
typing events of its chats only. So a chat's order holds with N relays, each with a
share of the chats; a relay killed is replaced by a spare within STANDBY_RECHECK (2 s).
Across partitions nothing is ordered; the one dependency that crosses them, a chat's
MemberGrant on its user's UserAdd (the user's group), is sent again while the broker
says "Group not found", for DEPENDENCY_WAIT (after an outage, partitions drain side by
side), before it is taken for a bug and set aside.

Over MQTT 3.1.1 (MQTT_PROTOCOL) a PUBACK carries no refusal: RabbitMQ closes the
connection on a publish it will not take. The rows in flight at a drop are each sent
alone next (the batch stops before them), and a row that, alone in flight, sees the
connection dropped RELAY_MAX_DROPS times is set aside (`dropped`): a broker restart
costs one lone resend per row that was in flight, a poison row a few reconnects.

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
    AccessOp,
    AccessRefused,
    AccessUnavailable,
    Command,
    access_op_from_json,
    chat_topic,
    parse_event_topic,
    user_topic,
)
from chatserver.models import OutboxEvent, RelayStatus
from chatserver.mqtt import Pending
from chatserver.workers import DATABASE_UNAVAILABLE, Session, Worker, broker_access, broker_connection

logger = logging.getLogger("chatserver.relay")

HEARTBEAT_EVERY = 1.0
# What the relay publishes to, to hear from the broker while there is nothing to send:
# under the server's own publish grant, and no client may subscribe to it.
PROBE_TOPIC = SERVER_PUBLISH_FILTER.removesuffix("#") + "server/probe"
# Any 64-bit number only this program uses: the key of the "one relay" advisory lock
# (partition k's: this + k).
ADVISORY_LOCK_KEY = 0x636861745F72656C  # "chat_rel"
# MQTT 5 refusals that may pass (the broker is overloaded): the row and those after it
# are sent again rather than set aside.
TRANSIENT_REFUSALS = frozenset({"Server busy", "Quota exceeded"})
# A MemberGrant whose user's group does not exist yet: with several partitions, its
# UserAdd may be another partition's row not sent yet (after an outage, partitions drain
# side by side). Sent again for this long before it is taken for a bug and set aside.
DEPENDENCY_WAIT = 30.0

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
        self.partitions = settings.RELAY_PARTITIONS
        # Which one this relay sends (set when it becomes active: the lock it took).
        self.partition = 0
        # Rows that were in flight when the broker dropped the connection: each is sent
        # alone next, to tell the row that makes it drop the connection from the others.
        self.suspects: set[int] = set()
        # Row id -> drops with it in flight alone (RELAY_MAX_DROPS: a dead letter).
        self.drops: dict[int, int] = {}
        # Row id -> monotonic time its grant first found no group (DEPENDENCY_WAIT).
        self.waiting: dict[int, float] = {}
        self.access = broker_access()
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
        self.ephemeral = ephemeral.Gate(owns=self.owns_topic)

    # --- the worker -----------------------------------------------------------------

    def lock_keys(self) -> tuple[int, ...]:
        return tuple(ADVISORY_LOCK_KEY + k for k in range(self.partitions))

    def activated(self) -> None:
        # SQLite: no lock, one relay, one partition (the settings refuse more).
        self.partition = self.held_lock or 0
        if self.partitions > 1:
            logger.info("partition %d of %d", self.partition, self.partitions)
            self.repartition()
        if not self.broker_started:
            logger.info("broker %s", ", ".join(f"{host}:{port}" for host, port in self.broker.addresses))
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
        rows = self.pending_rows()
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

    def pending_rows(self) -> list[OutboxEvent]:
        """The next batch of this relay's partition, in id order (along the primary key:
        the partition's rows are spread through the table; the README has the cost)."""
        rows = OutboxEvent.objects.order_by("id")
        if self.partitions > 1:
            rows = rows.filter(partition=self.partition)
        return list(rows[: settings.RELAY_BATCH_SIZE])

    def repartition(self) -> int:
        """Give rows queued under another RELAY_PARTITIONS (or inserted by hand) the
        partition of their key under this one; how many. A scan of the backlog, once per
        activation: nothing to change in the normal case."""
        if self.partitions == 1:
            return 0  # one relay reads every row, whatever its partition
        table, key = connection.ops.quote_name(OUTBOX_TABLE), connection.ops.quote_name("partition_key")
        partition = connection.ops.quote_name("partition")
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {partition} = MOD({key}, %s) WHERE {partition} <> MOD({key}, %s)",
                [self.partitions, self.partitions],
            )
            changed = cursor.rowcount
        if changed:
            logger.info("%d queued rows moved to their partition of %d", changed, self.partitions)
        return changed

    def owns_topic(self, topic: str) -> bool:
        """Whether an ephemeral event to `topic` (a chat's typing topic, a chat or user
        topic: `parse_event_topic`) is this relay's: its id in this relay's partition, as
        the rows of that chat or user."""
        if self.partitions == 1:
            return True
        parsed = parse_event_topic(topic)
        if parsed is None:
            return self.partition == 0  # not an event topic: partition 0 logs its refusal
        return parsed[1] % self.partitions == self.partition

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
            if parse_event_topic(topic) is None:
                logger.error("ephemeral publish to %s refused: not an event topic", topic)
                continue
            # QoS 0: nobody waits for it, and the broker queues it for no offline session.
            self.broker.publish(topic, data, qos=0)

    # --- one batch ------------------------------------------------------------------

    @staticmethod
    def access_ops(row: OutboxEvent) -> list[AccessOp]:
        """The row's access operations (raises if they are not ones)."""
        if not isinstance(row.access, list):
            raise ValueError(f"access must be a list, got {row.access!r}")
        return [access_op_from_json(op) for op in row.access]

    def translate(self, row: OutboxEvent, ops: list[AccessOp] | None = None) -> tuple[list[Command], list[Publish]]:
        """The broker work of one row: its commands, then its publishes, in order (its
        access operations' own work is `access.apply`, in `send_row`); `ops`: its
        `access_ops`, if read already. Raises (anything) if the row is not one the relay
        can handle."""
        ops = self.access_ops(row) if ops is None else ops
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
        # A row in flight at the broker's last drop goes alone (and the batch stops
        # before it): if the drop comes again, that row is the cause (see `dropped`).
        first_suspect = next((i for i, row in enumerate(rows) if row.id in self.suspects), None)
        alone = first_suspect == 0
        if first_suspect is not None:
            rows = rows[: max(1, first_suspect)]
        failed: dict[int, str] = {}
        # Per row, in id order: (row, its pendings, its publishes' topics and pendings);
        # a deleted row's entry keeps neither (a 100-member group's batch of 500 rows is
        # 50,500 of each: only what is in flight is held).
        sent: list[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]] = []
        # Rows are translated as the window reaches them (for the same reason); the one
        # the cap on copies stopped at waits here for the next round.
        ahead: dict[int, tuple] = {}

        def work(index: int) -> tuple:
            if index in ahead:
                return ahead.pop(index)
            row = rows[index]
            try:
                ops = self.access_ops(row)
                return (row, ops, *self.translate(row, ops))
            except Exception as exc:  # whatever it is, it is this row's
                failed[row.id] = f"cannot translate: {type(exc).__name__}: {exc}"
                return (row, [], None, None)

        total = len(rows)
        deleted = 0  # rows[:deleted] are out of the outbox
        blocked = None  # the row whose access work could not be done now: nothing after it is sent
        while deleted < total:
            # Fill the window: never more than RELAY_WINDOW rows sent and not deleted, nor
            # (but for the first of them) more than COPIES_IN_FLIGHT publishes; nothing
            # after a row whose access work could not be done (`blocked`).
            copies = sum(len(published) for _, _, published in sent[deleted:])
            capped = False
            for index in range(len(sent), min(deleted + window, total)) if blocked is None else ():
                row, ops, commands, publishes = work(index)
                if len(sent) > deleted and copies + len(publishes or ()) > COPIES_IN_FLIGHT:
                    ahead[index] = (row, ops, commands, publishes)
                    capped = True
                    break
                entry, applied = self.send_row(row, ops, commands, publishes, failed, sent)
                sent.append(entry)
                copies += len(publishes or ())
                if not applied:
                    blocked = row.id
                    break
            # The older half of what is in flight (of the window, unless capped).
            end = deleted + max(1, (len(sent) - deleted) // 2) if capped else min(deleted + half, total)
            pendings = [pending for _, row_pendings, _ in sent[deleted:end] for pending in row_pendings]
            stopped = None
            if not self.wait_acknowledged(pendings) and (answered := self.answered(sent[deleted:end])) < end - deleted:
                end = deleted + answered
                stopped = (f"access of row #{blocked} not applied; will resend from it" if sent[end][0].id == blocked
                           else f"broker did not answer row #{sent[end][0].id} in time; will resend from it")
                if self.dropped(sent[end:], alone=alone, failed=failed):
                    stopped = None  # set aside: that row is done with
                    end += 1
            for index in range(deleted, end):
                row, _, published = sent[index]
                if row.id in failed:
                    continue
                busy = next((p.error for _, p in published if p.error in TRANSIENT_REFUSALS), None)
                if busy:
                    end, stopped = index, f"broker busy ({busy}) at row #{row.id}; will resend from it"
                    break
                if self.partitions > 1 and self.waits_for_user(sent[index]):
                    end, stopped = index, f"row #{row.id} grants a user whose group is not there yet; will resend"
                    break
                if refusals := self.refusals(sent[index]):
                    failed[row.id] = "broker refused: " + "; ".join(refusals)
                self.waiting.pop(row.id, None)
                if alone:
                    self.suspects.discard(row.id)
                    self.drops.pop(row.id, None)
            self.delete(rows[deleted:end], failed)
            sent[deleted:end] = [(row, [], []) for row, _, _ in sent[deleted:end]]
            if stopped:
                logger.warning("%s (%d rows of the batch left)", stopped, total - end)
                return False
            deleted = end
        return True

    def send_row(self, row: OutboxEvent, ops: list[AccessOp], commands: list[Command] | None,
                 publishes: list[Publish] | None, failed: dict[int, str],
                 sent: list[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]],
                 ) -> tuple[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]], bool]:
        """Hand one row's work to the connection; a row already in `failed` sends nothing.
        Also says whether the rows after it may be sent (False: its access work is not done).

        Its access operations' synchronous work (`access.apply`: RabbitMQ's management
        API) is done first, once everything sent before it has been answered, so that it
        comes between the rows before it and the publishes after it. If it cannot be done
        now, the row gets a failed pending (it and the rows after it stay queued); if it
        is refused, the row is set aside without sending anything."""
        if commands is None or publishes is None:
            return (row, [], []), True
        ops = [op for op in ops if self.access.applies(op)]
        if ops and not self.apply_access(row, ops, failed, sent):
            if row.id in failed:
                return (row, [], []), True
            pending = Pending(-1)
            pending._fail("access not applied; will retry")
            return (row, [pending], []), False
        try:
            control = self.broker.control(commands) if commands else None
            published = [(topic, self.broker.publish(topic, data, retain=retain)) for topic, data, retain in publishes]
        except Exception as exc:  # paho refusing what it was given: this row's doing
            failed[row.id] = f"cannot send: {type(exc).__name__}: {exc}"
            return (row, [], []), True
        pendings = [pending for _, pending in published]
        if control is not None:
            pendings.insert(0, control)
        return (row, pendings, published), True

    def apply_access(self, row: OutboxEvent, ops: list[AccessOp], failed: dict[int, str],
                     sent: list[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]]) -> bool:
        """`access.apply` for each op of the row; False if not done (refused: `failed`)."""
        earlier = [p for _, pendings, _ in sent for p in pendings if not p.finished]
        if earlier and not self.wait_acknowledged(earlier):
            return False
        try:
            for op in ops:
                self.access.apply(op, created_at=row.created_at.timestamp(), pause=self.pause)
        except AccessUnavailable as exc:
            logger.warning("access of row #%s not applied, will retry: %s", row.id, exc)
            return False
        except AccessRefused as exc:
            failed[row.id] = f"broker refused: {exc}"
            return False
        return True

    def pause(self, seconds: float) -> None:
        """Wait (an access operation's), keeping the heartbeat fresh."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0 and not self.stop.is_set():
            self.stop.wait(min(left, HEARTBEAT_EVERY))
            self.heartbeat(connected=self.broker.connected)

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

    def dropped(self, unanswered: list[tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]], *,
                alone: bool, failed: dict[int, str]) -> bool:
        """After a wait that ended short: if the broker dropped the connection with these
        rows in flight, they become suspects, each to be sent alone next. True if the
        row was alone already and this was its RELAY_MAX_DROPS-th drop: it is then in
        `failed`, to be set aside.

        Why: over MQTT 3.1.1 a publish the broker will not take gets no refusal to read;
        RabbitMQ closes the connection instead (so does Mosquitto for a packet above its
        limit). Resending the same window would make it drop the connection again and
        again, and nothing of the partition would pass any more. A row that, alone in
        flight, saw the connection dropped that often is the cause, not a restart of the
        broker (which also drops rows in flight: those pass on their lone resend)."""
        suspects = [row for row, pendings, _ in unanswered
                    if any(p.failed and (p.error or "").startswith("disconnected") for p in pendings)]
        if not suspects:
            return False
        if not alone:
            self.suspects.update(row.id for row in suspects)
            return False
        row = suspects[0]
        self.drops[row.id] = drops = self.drops.get(row.id, 0) + 1
        if drops < settings.RELAY_MAX_DROPS:
            return False
        failed[row.id] = f"the broker dropped the connection {drops} times with this row in flight alone"
        self.suspects.discard(row.id)
        self.drops.pop(row.id, None)
        return True

    def waits_for_user(self, entry: tuple[OutboxEvent, list[Pending], list[tuple[str, Pending]]]) -> bool:
        """Whether this answered row's grant found no group for its user (the broker
        access's `is_not_yet`), within DEPENDENCY_WAIT of the first time: that user's
        UserAdd is another partition's row, maybe not sent yet (`outbox.partition_key`).
        Past the wait, it is a refusal."""
        row, pendings, _ = entry
        missing = any(
            error and self.access.is_not_yet(command, error)
            for pending in pendings if pending.commands is not None
            for command, error in pending.result
        )
        if not missing:
            return False
        first = self.waiting.setdefault(row.id, time.monotonic())
        return time.monotonic() - first < DEPENDENCY_WAIT

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
            id=self.partition + 1,
            defaults={
                "broker_connected": connected,
                "heartbeat_at": wall,
                "broker_answered_at": None if answered is None else wall - timedelta(seconds=now - answered),
                "broker_up_since": self.up_since,
            },
        )
        self.last_heartbeat = now
        self.reported_connected = connected
