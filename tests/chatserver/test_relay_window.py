"""The relay's window: rows leave the outbox slice by slice as the broker answers them.

In the relay's own process (no relay process, no HTTP): rows written straight into the
outbox inside the test's transaction, which the session's relay process, if any, cannot
see. The first test uses the session's broker and counts statements; the others hand the
relay a broker that answers as told (`ScriptedBroker`), to hold it to the window, the
slices and what it does when the broker drops, stalls, is busy or refuses.
The faults with real processes are in test_faults.py.
"""

import json
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chatserver.broker_access import UserAdd
from chatserver.models import DeadLetter, OutboxEvent
from chatserver.mqtt import Pending
from chatserver.relay import Relay

pytestmark = pytest.mark.django_db

USER = 900_000_001
TOPIC = f"chat/users/{USER}"


def backlog(count: int, *, chat_id: int | None = None) -> list[OutboxEvent]:
    """`count` rows, each publishing {"n": k} to USER's topic (and the chat's, if given)."""
    return OutboxEvent.objects.bulk_create(
        [OutboxEvent(payload=json.dumps({"n": k}), user_ids=[USER], chat_id=chat_id) for k in range(count)]
    )


def queued() -> list[int]:
    return [json.loads(payload)["n"] for payload in OutboxEvent.objects.order_by("id").values_list("payload", flat=True)]


class NoSession:
    def wait(self, timeout: float) -> bool:
        return False


class ScriptedBroker:
    """Stands in for `BrokerConnection`: records what the relay sends, and answers it when
    the relay waits, as `answer(n, topic)` says: None (acknowledged), an MQTT 5 reason
    (refused), "drop" (the connection drops: this and everything outstanding fails, and
    so does whatever is sent after) or "never" (a stalled broker). `n` is the payload's
    number. Before each publish it records how many rows are sent and not deleted
    (`undeleted_at_publish`; `scripted_relay` tells it what the relay deleted)."""

    connected = True
    last_answer = None

    def __init__(self, answer=lambda n, topic: None) -> None:
        self.answer = answer
        self.outstanding: list[tuple[Pending, int | None, str]] = []
        self.published: list[int] = []
        self.commands: list[dict] = []
        self.dropped = False
        self.undeleted_at_publish: list[int] = []
        self.deleted: set[int] = set()  # the numbers of the rows the relay deleted
        self.sent: list = []  # (topic, n) per publish, "commands" per command message
        self.waits = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Pending:
        pending = Pending(0)
        n = json.loads(payload)["n"]
        self.undeleted_at_publish.append(len(set(self.published) - self.deleted))
        self.published.append(n)
        self.sent.append((topic, n))
        self._send(pending, n, topic)
        return pending

    def control(self, commands: list[dict]) -> Pending:
        pending = Pending(0, commands=list(commands))
        self.commands += commands
        self.sent.append("commands")
        self._send(pending, None, "$CONTROL")
        return pending

    def _send(self, pending: Pending, n: int | None, topic: str) -> None:
        if self.dropped:
            pending._fail("not connected")
        else:
            self.outstanding.append((pending, n, topic))

    def wait(self, pendings, timeout: float) -> bool:
        self.waits += 1
        for pending, n, topic in list(self.outstanding):
            answer = self.answer(n, topic)
            if answer == "never":
                continue
            self.outstanding.remove((pending, n, topic))
            if answer == "drop" or self.dropped:
                self.dropped = True
                pending._fail("disconnected")
            elif pending.commands is not None:
                pending._complete(result=[(command, None) for command in pending.commands])
            else:
                pending._complete(error=answer)
        if not all(pending.finished for pending in pendings):
            time.sleep(timeout)
        return all(pending.done for pending in pendings)

    def close(self) -> None:
        pass


def scripted_relay(broker: ScriptedBroker) -> Relay:
    relay = Relay()
    relay.broker = broker
    relay.heartbeat = lambda **kwargs: None
    delete = relay.delete

    def deleting(rows, failed):
        delete(rows, failed)
        broker.deleted.update(json.loads(row.payload)["n"] for row in rows)

    relay.delete = deleting
    return relay


# --- the good path, counted -------------------------------------------------------------------


def test_a_backlog_of_2000_rows_costs_one_select_per_batch_and_one_delete_per_slice(broker, settings):
    # given: the relay on the session's broker, 2,000 rows of a direct chat's messages
    settings.MQTT_HOST, settings.MQTT_PORT = broker.host, broker.port
    settings.MQTT_ADMIN_USERNAME, settings.MQTT_ADMIN_PASSWORD = broker.admin_username, broker.admin_password
    settings.MQTT_PLAINTEXT = True
    settings.RELAY_BATCH_SIZE, settings.RELAY_WINDOW = 500, 200
    backlog(2000, chat_id=900_000_002)
    relay = Relay()
    # The heartbeat is a statement a second, whatever the traffic; and in the test's
    # transaction it would hold the status row's lock from the session's relay process.
    relay.heartbeat = lambda **kwargs: None
    relay.activated()
    try:
        # when: it drains the outbox
        deadline = time.monotonic() + 60
        with CaptureQueriesContext(connection) as statements:
            while relay.idle_until is None:
                assert relay.step(session=NoSession())
                assert time.monotonic() < deadline, "the relay did not drain the backlog within 60 s"
    finally:
        relay.close()

    # then: 4 batches and the look that found the outbox empty; 2,000 / 100 deletes
    assert queued() == []
    kinds = [query["sql"].split()[0] for query in statements.captured_queries]
    assert (kinds.count("SELECT"), kinds.count("DELETE"), len(kinds)) == (5, 20, 25)


# --- the window -------------------------------------------------------------------------------


def test_no_more_than_the_window_is_sent_and_not_deleted_and_slices_are_half_of_it(settings):
    # given
    settings.RELAY_WINDOW = 10
    rows = backlog(35)
    broker = ScriptedBroker()
    relay = scripted_relay(broker)

    # when
    with CaptureQueriesContext(connection) as statements:
        assert relay.send(rows) is True

    # then: everything sent once, in order; at most 10 sent and not deleted at any time,
    # ten of them the moment the window was full; 35 rows deleted 5 at a time
    assert broker.published == list(range(35))
    assert max(broker.undeleted_at_publish) == 10 - 1
    assert queued() == []
    assert [q["sql"].split()[0] for q in statements.captured_queries] == ["DELETE"] * 7


def test_a_dropped_connection_deletes_the_answered_rows_and_the_next_round_resends_from_the_first_unanswered(settings):
    # given: the connection drops when row 12 is answered, after 0..11 were
    settings.RELAY_WINDOW = 10
    rows = backlog(30)
    relay = scripted_relay(ScriptedBroker(lambda n, topic: "drop" if n == 12 else None))

    # when
    assert relay.send(rows) is False

    # then: 0..9 deleted (two slices of 5), and 10 and 11 (answered, in a slice the drop
    # cut short), the rest queued
    assert queued() == list(range(12, 30))
    assert DeadLetter.objects.count() == 0

    # and the next rounds, on a new connection, send from 12 on, in order: the rows that
    # were in flight at the drop (12..14: the window was 5..14) one at a time, then the rest
    relay.broker = broker = ScriptedBroker()
    rounds = []
    while OutboxEvent.objects.exists():
        assert relay.send(list(OutboxEvent.objects.order_by("id"))) is True
        rounds.append(len(broker.published) - sum(rounds))
    assert broker.published == list(range(12, 30))
    assert rounds == [1, 1, 1, 15]
    assert queued() == []


def test_a_row_that_makes_the_broker_drop_the_connection_each_time_is_set_aside_after_max_drops(settings):
    # given: the broker drops the connection whenever row 3 is in flight (MQTT 3.1.1 has
    # no refusal to read: RabbitMQ closes the connection on a forbidden publish)
    settings.RELAY_WINDOW, settings.RELAY_MAX_DROPS = 10, 3
    backlog(8)
    relay = scripted_relay(ScriptedBroker())

    # when: round after round, on a new connection each
    results = []
    for _ in range(10):
        if not OutboxEvent.objects.exists():
            break
        relay.broker = ScriptedBroker(lambda n, topic: "drop" if n == 3 else None)
        results.append(relay.send(list(OutboxEvent.objects.order_by("id"))))

    # then: 0..2 went; 3 went alone 3 times, each time dropped, and is a dead letter;
    # 4..7 passed (one at a time: they were in flight at the first drop, then together)
    assert queued() == []
    letter = DeadLetter.objects.get()
    assert json.loads(letter.payload) == {"n": 3}
    assert letter.error == "the broker dropped the connection 3 times with this row in flight alone"
    assert results[0] is False and results[1:3] == [False, False]


def test_a_row_in_flight_at_a_drop_that_then_passes_alone_is_no_suspect_any_more(settings):
    # given: one drop (a broker restart) with rows 2..5 in flight
    settings.RELAY_WINDOW, settings.RELAY_MAX_DROPS = 10, 2
    backlog(6)
    drops = iter([True])
    relay = scripted_relay(ScriptedBroker(lambda n, topic: "drop" if n == 2 and next(drops, False) else None))
    assert relay.send(list(OutboxEvent.objects.order_by("id"))) is False

    # when: the broker is back
    relay.broker = ScriptedBroker()
    while OutboxEvent.objects.exists():
        assert relay.send(list(OutboxEvent.objects.order_by("id"))) is True

    # then: all delivered, nothing set aside, nothing remembered
    assert DeadLetter.objects.count() == 0
    assert (relay.suspects, relay.drops) == (set(), {})


def test_a_stalled_broker_keeps_the_unanswered_rows_and_the_rest_of_their_slice_answered_is_deleted(settings):
    # given: a broker that never answers row 7
    settings.RELAY_WINDOW, settings.RELAY_ACK_TIMEOUT = 10, 0.3
    rows = backlog(20)
    broker = ScriptedBroker(lambda n, topic: "never" if n == 7 else None)
    relay = scripted_relay(broker)

    # when
    started = time.monotonic()
    assert relay.send(rows) is False

    # then: after RELAY_ACK_TIMEOUT, 0..6 are gone and 7.. are queued (8, 9, answered
    # after it, are resent: never skipped)
    assert time.monotonic() - started >= 0.3
    assert queued() == list(range(7, 20))
    assert broker.published == list(range(15))  # the window: 5 deleted + 10 sent


class SlowBroker(ScriptedBroker):
    """Answers one thing per `every` seconds, in order, as a broker working through a long
    queue of dynamic-security commands does."""

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self.last_answer = None

    def wait(self, pendings, timeout: float) -> bool:
        self.waits += 1
        deadline = time.monotonic() + timeout
        while self.outstanding and not all(p.finished for p in pendings) and time.monotonic() < deadline:
            time.sleep(self.every)
            pending, _, _ = self.outstanding.pop(0)
            if pending.commands is not None:
                pending._complete(result=[(command, None) for command in pending.commands])
            else:
                pending._complete(error=None)
            self.last_answer = time.monotonic()
        return all(pending.done for pending in pendings)


def test_a_slow_broker_that_keeps_answering_is_waited_for_not_sent_the_same_work_again(settings):
    # given: a slice whose answers take 3 x RELAY_ACK_TIMEOUT in all, each well within it
    settings.RELAY_WINDOW, settings.RELAY_ACK_TIMEOUT = 20, 0.2
    rows = backlog(10)
    broker = SlowBroker(every=0.06)
    relay = scripted_relay(broker)

    # when
    started = time.monotonic()
    sent = relay.send(rows)

    # then: all of it went through once, nothing resent, nothing left
    assert sent is True
    assert time.monotonic() - started >= 0.5
    assert broker.published == list(range(10))
    assert queued() == []


@pytest.mark.parametrize("reason", ["Server busy", "Quota exceeded"])
def test_a_transient_refusal_keeps_the_refused_row_and_those_after_it_queued(settings, reason):
    # given
    settings.RELAY_WINDOW = 10
    rows = backlog(20)
    broker = ScriptedBroker(lambda n, topic: reason if n == 13 else None)

    # when
    assert scripted_relay(broker).send(rows) is False

    # then: not a dead letter; sent again from 13 on
    assert queued() == list(range(13, 20))
    assert DeadLetter.objects.count() == 0


def test_refused_rows_are_set_aside_in_their_slice_and_the_others_flow_on(settings):
    # given: the broker refuses row 3 for good; row 6 cannot be translated
    settings.RELAY_WINDOW = 4
    rows = backlog(9)
    rows[6].access = [{"op": "teleport"}]
    rows[6].save(update_fields=["access"])
    broker = ScriptedBroker(lambda n, topic: "Not authorized" if n == 3 else None)

    # when
    assert scripted_relay(broker).send(rows) is True

    # then: every other row sent once in order, nothing left queued, two dead letters
    assert broker.published == [0, 1, 2, 3, 4, 5, 7, 8]
    assert queued() == []
    letters = {letter.outbox_id: letter.error for letter in DeadLetter.objects.all()}
    assert letters == {
        rows[3].id: f"broker refused: publish to {TOPIC}: Not authorized",
        rows[6].id: "cannot translate: ValueError: unknown access operation: 'teleport'",
    }


def test_a_row_s_commands_go_out_after_the_row_before_and_before_its_publishes(settings):
    # given: a row that grants between two messages, in a window of 2
    settings.RELAY_WINDOW = 2
    rows = backlog(3)
    rows[1].access = [UserAdd(user=USER).to_json()]
    rows[1].save(update_fields=["access"])
    broker = ScriptedBroker()

    # when
    assert scripted_relay(broker).send(rows) is True

    # then
    assert broker.sent == [(TOPIC, 0), "commands", (TOPIC, 1), (TOPIC, 2)]
    assert broker.commands == Relay().translate(rows[1])[0]
    assert queued() == []


class GrantBeforeItsUser(ScriptedBroker):
    """Answers a member grant "Group not found" (its user's UserAdd, in another partition,
    not applied yet) the first `times` times, then like Mosquitto once the group exists."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def wait(self, pendings, timeout: float) -> bool:
        for pending, _, _ in list(self.outstanding):
            if pending.commands is not None:
                self.outstanding.remove((pending, None, "$CONTROL"))
                missing = self.times > 0
                self.times -= 1
                pending._complete(result=[(c, "Group not found" if missing and c["command"] == "addGroupRole" else None)
                                          for c in pending.commands])
        return super().wait(pendings, timeout)


def grant_relay(broker: ScriptedBroker) -> Relay:
    """The relay of partition 1 of 2 on `broker` (rows without payload: no `n` to record)."""
    relay = Relay()
    relay.broker, relay.heartbeat = broker, lambda **kwargs: None
    relay.partitions, relay.partition = 2, 1
    return relay


def test_with_partitions_a_grant_whose_user_group_is_missing_is_sent_again_until_it_exists(settings):
    # given: two partitions; a member grant (chat 7's partition) whose user's signup row
    # is another partition's, not sent yet
    settings.RELAY_PARTITIONS = 2
    OutboxEvent.objects.create(access=[{"op": "member_grant", "chat": 7, "user": 5}], partition_key=7)
    relay = grant_relay(GrantBeforeItsUser(times=2))

    # when: three rounds
    results = [relay.send(list(OutboxEvent.objects.order_by("id"))) for _ in range(3) if OutboxEvent.objects.exists()]

    # then: held twice, applied the third time; no dead letter
    assert results == [False, False, True]
    assert (OutboxEvent.objects.count(), DeadLetter.objects.count()) == (0, 0)


def test_with_partitions_a_grant_whose_user_group_never_comes_is_set_aside_after_the_wait(settings, monkeypatch):
    settings.RELAY_PARTITIONS = 2
    monkeypatch.setattr("chatserver.relay.DEPENDENCY_WAIT", 0.0)
    OutboxEvent.objects.create(access=[{"op": "member_grant", "chat": 7, "user": 5}], partition_key=7)
    relay = grant_relay(GrantBeforeItsUser(times=99))

    assert relay.send(list(OutboxEvent.objects.order_by("id"))) is True

    assert DeadLetter.objects.get().error == "broker refused: addGroupRole: Group not found"


def test_a_group_s_rows_hand_paho_no_more_than_copies_in_flight_publishes_at_a_time(settings, monkeypatch):
    # given: 40 rows of a 30-member group (31 publishes each: 30 user topics and the chat's);
    # 100 copies in flight at most, a window of 200 rows
    import chatserver.relay

    monkeypatch.setattr(chatserver.relay, "COPIES_IN_FLIGHT", 100)
    settings.RELAY_WINDOW = 200
    members = [USER + i for i in range(30)]
    rows = OutboxEvent.objects.bulk_create(
        [OutboxEvent(payload=json.dumps({"n": k}), user_ids=members, chat_id=900_000_003) for k in range(40)]
    )
    broker = ScriptedBroker()
    in_flight = []
    publish = broker.publish

    def counting(topic, payload, **kwargs):
        in_flight.append(len(broker.outstanding))
        return publish(topic, payload, **kwargs)

    broker.publish = counting
    relay = scripted_relay(broker)

    # when
    assert relay.send(rows) is True

    # then: every copy once, row after row; never more than 100 unanswered when one more
    # is handed over (three rows: 93), and the outbox empty
    assert broker.published == [k for k in range(40) for _ in range(31)]
    assert max(in_flight) == 92
    assert queued() == []
