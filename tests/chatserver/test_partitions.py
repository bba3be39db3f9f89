"""Relays partitioned by chat (RELAY_PARTITIONS): which relay sends a row, what each relay
reads and reports, and, end to end, three relays and a spare with one relay killed mid-load.

The rule is `chatserver.outbox.partition_key` (pure); the services' rows are read back
from the outbox; the relay's SELECT and heartbeat in the test's transaction; the fault
test on a stack of its own (tests/support/faults.py: its own database, Mosquitto, granian
and four relay processes).
"""

import json
import re
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from chatserver import ephemeral, outbox
from chatserver.broker_access import ChatRemove, DeviceAdd, DeviceRemove, MemberGrant, MemberRevoke, UserAdd
from chatserver.events import Event, EventType
from chatserver.models import OutboxEvent, RelayStatus
from chatserver.relay import Relay
from tests.support.faults import ChatWorld, SteadyLoad, own_stack
from tests.support.stack import ProcessStack, ServerProcess, wait_until

MESSAGE = Event(type=EventType.MESSAGE_CREATED, data={"id": 1}, chat=7, version=3)
PRESENCE = Event(type=EventType.PRESENCE_UPDATED, data={"id": 5})


# --- the rule (no I/O) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, key",
    [
        # a chat's event, to its topic or its members only: the chat
        ({"event": MESSAGE, "user_ids": [5, 6]}, 7),
        # a new member's grant travels with the chat's event, so before its next message
        ({"event": MESSAGE, "user_ids": [5], "access": [MemberGrant(chat=7, user=5)]}, 7),
        # a group's last member leaving: access only, but about the chat
        ({"event": None, "user_ids": [], "access": [MemberRevoke(chat=7, user=5), ChatRemove(chat=7)]}, 7),
        # a signup, a sign-out: the user of the access operations
        ({"event": None, "user_ids": [], "access": [
            UserAdd(user=5), DeviceAdd(user=5, username="u5-1", password="p", client_id="c-5-1")]}, 5),
        ({"event": None, "user_ids": [], "access": [DeviceRemove(user=5, username="u5-1", client_id="c-5-1")]}, 5),
        # a user-level event: the first recipient (services put the user it is about first)
        ({"event": PRESENCE, "user_ids": [5, 3, 9]}, 5),
        # unless the caller names the key
        ({"event": PRESENCE, "user_ids": [3, 9], "key": 5}, 5),
    ],
)
def test_a_rows_partition_key_is_its_chat_else_the_user_it_is_about(row, key):
    assert outbox.partition_key(
        event=row["event"], user_ids=row["user_ids"], access=row.get("access", []), key=row.get("key")
    ) == key


def test_an_ephemeral_event_is_published_by_the_relay_of_its_chats_partition_only(settings):
    # given: three partitions, the relay of partition 1
    settings.RELAY_PARTITIONS = 3
    relay = Relay()
    relay.partition = 1

    def notification(topic: str) -> str:
        return json.dumps({"topic": topic, "key": f"{topic}:5", "state": "typing", "sent": time.time(),
                           "event": '{"type":"typing.updated"}'})

    # when / then: chat 7 (7 % 3 = 1) is its own, chat 8 is not; typing and user topics alike
    assert relay.owns_topic("chat/chats/7") and not relay.owns_topic("chat/chats/8")
    assert relay.owns_topic("chat/chats/7/typing") and not relay.owns_topic("chat/chats/8/typing")
    assert relay.owns_topic("chat/users/4") and not relay.owns_topic("chat/users/6")
    assert relay.ephemeral.receive(notification("chat/chats/7/typing")) == [
        ("chat/chats/7/typing", b'{"type":"typing.updated"}')]
    assert relay.ephemeral.receive(notification("chat/chats/8/typing")) == []
    # and the gate keeps no state of another partition's event (nothing held to publish later)
    assert list(relay.ephemeral.keys) == ["chat/chats/7/typing:5"]


def test_a_gate_without_owner_takes_every_topic():
    gate = ephemeral.Gate()
    payload = json.dumps({"topic": "chat/chats/8", "key": "k", "state": "typing", "sent": time.time(), "event": "{}"})

    assert gate.receive(payload) == [("chat/chats/8", b"{}")]


# --- the services' rows ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_chats_rows_carry_the_chat_and_a_users_rows_the_user_as_their_key(settings):
    from tests.support.factories import group_chat, make_user, send_message

    # given: three partitions
    settings.RELAY_PARTITIONS = 3
    alice, bob = make_user(), make_user()
    OutboxEvent.objects.all().delete()

    # when: a group is made, a message sent, and alice changes her profile
    cid = group_chat(alice, bob)
    send_message(alice, cid, "hi")
    response = alice.client.patch("/accounts/me/", {"display_name": "Alice A."}, format="json")
    assert response.status_code == 200, response.content

    # then: the chat's rows (its creation with the members' grants, the message) have the
    # chat's key; user.updated, to alice's audience in id order, has alice's; each row
    # the partition of its key
    rows = list(OutboxEvent.objects.order_by("id"))
    by_type = {json.loads(row.payload)["type"] if row.payload else "access": row for row in rows}
    assert by_type["chat.created"].partition_key == cid
    assert by_type["message.created"].partition_key == cid
    assert by_type["user.updated"].partition_key == alice.id
    assert {(row.partition_key, row.partition) for row in rows} == {(cid, cid % 3), (alice.id, alice.id % 3)}


# --- what a relay reads and reports -------------------------------------------------------------


@pytest.mark.django_db
def test_a_relay_reads_the_rows_of_its_partition_only_in_id_order(settings):
    # given: rows of keys 0..8 queued while there was one partition; now there are three
    settings.RELAY_PARTITIONS = 3
    rows = OutboxEvent.objects.bulk_create(
        [OutboxEvent(payload=json.dumps({"n": k}), user_ids=[900_000_001], partition_key=k, partition=0)
         for k in range(9)]
    )
    relay = Relay()

    # when: a relay starts (and moves them to their partitions), and each reads its own
    assert relay.repartition() == 6
    assert relay.repartition() == 0
    taken = {}
    for partition in range(3):
        relay.partition = partition
        taken[partition] = [row.partition_key for row in relay.pending_rows()]

    # then: each its own third, in id order, and all rows taken once
    assert taken == {0: [0, 3, 6], 1: [1, 4, 7], 2: [2, 5, 8]}
    assert sorted(k for keys in taken.values() for k in keys) == [row.partition_key for row in rows]


@pytest.mark.django_db
def test_each_partitions_relay_writes_its_own_heartbeat_row(settings):
    settings.RELAY_PARTITIONS = 3
    relay = Relay()
    relay.partition = 2

    relay.heartbeat(connected=False, force=True)

    assert list(RelayStatus.objects.values_list("id", "broker_connected")) == [(3, False)]


def beat(partition: int, *, answered_ago: float | None = 0.1, age: float = 0.0) -> None:
    now = timezone.now()
    RelayStatus.objects.update_or_create(id=partition + 1, defaults={
        "broker_connected": True, "heartbeat_at": now - timedelta(seconds=age),
        "broker_answered_at": None if answered_ago is None else now - timedelta(seconds=answered_ago)})


@pytest.mark.django_db
def test_health_is_degraded_while_any_partition_has_no_live_relay(settings):
    # given: three partitions; 0 and 2 report, 1 went silent 6 s ago
    settings.RELAY_PARTITIONS = 3
    beat(0)
    beat(1, age=6.0)
    beat(2)

    body = APIClient().get("/health/").json()

    # then
    assert (body["status"], body["relay"], body["broker"]) == ("degraded", "down", "unknown")
    assert body["partitions"] == [
        {"partition": 0, "relay": "running", "broker": "up"},
        {"partition": 1, "relay": "down", "broker": "unknown"},
        {"partition": 2, "relay": "running", "broker": "up"},
    ]

    # and once its spare took over, ok
    beat(1)
    body = APIClient().get("/health/").json()
    assert (body["status"], body["relay"], body["broker"]) == ("ok", "running", "up")


@pytest.mark.django_db
def test_health_says_the_broker_is_down_when_it_stopped_answering_one_partitions_relay(settings):
    settings.RELAY_PARTITIONS = 2
    beat(0)
    beat(1, answered_ago=4.0)

    body = APIClient().get("/health/").json()

    assert (body["status"], body["relay"], body["broker"]) == ("degraded", "running", "down")
    assert [p["broker"] for p in body["partitions"]] == ["up", "down"]


@pytest.mark.django_db
def test_a_heartbeat_row_of_a_partition_beyond_relay_partitions_is_not_read(settings):
    # given: a stack that ran with 2 partitions and now runs with 1
    settings.RELAY_PARTITIONS = 1
    beat(0)
    beat(1, age=60.0)

    assert outbox.relay_status() == {"relay": "running", "broker": "up",
                                     "partitions": [{"partition": 0, "relay": "running", "broker": "up"}]}


@pytest.mark.django_db
def test_back_pressure_refuses_only_while_every_partitions_relay_works_and_the_outbox_runs_late(settings):
    from chatserver import backpressure

    # given: two partitions, an event waiting 20 s, the broker answering partition 0's
    # relay for a minute and partition 1 without a relay
    settings.RELAY_PARTITIONS, settings.INGEST_MAX_OUTBOX_AGE = 2, 10.0
    OutboxEvent.objects.create(created_at=timezone.now() - timedelta(seconds=20), access=[{"op": "x"}])
    beat(0)
    RelayStatus.objects.filter(id=1).update(broker_up_since=timezone.now() - timedelta(seconds=60))

    # then: an outage, not overload
    assert backpressure.delivery_behind() is False

    # when: partition 1's relay runs, the broker answering it for 5 s (the event is from
    # before: the outage's backlog, drained without refusing anybody)
    beat(1)
    RelayStatus.objects.filter(id=2).update(broker_up_since=timezone.now() - timedelta(seconds=5))
    assert backpressure.delivery_behind() is False

    # and when the broker has answered both relays since before the event: it came while
    # delivery worked, and waits longer than the threshold: delivery is behind
    RelayStatus.objects.filter(id=2).update(broker_up_since=timezone.now() - timedelta(seconds=30))
    assert backpressure.delivery_behind() is True


# --- three relays and a spare, one killed mid-load (real processes) --------------------------

PARTITIONS = 3
RESUME_WITHIN = 5.0


@pytest.fixture
def partitioned_stack(fault_cluster, new_broker, tmp_path):
    """A fault stack whose relays run RELAY_PARTITIONS=3: four relay processes (three
    active, a spare standing by), each logging to its own file; on the suite's broker."""
    broker, broker_dir = new_broker("chat-partitions-")
    extra: list[ServerProcess] = []

    def more_relays(processes: ProcessStack) -> None:
        for n in range(2, PARTITIONS + 2):
            extra.append(ServerProcess(f"relay-{n}", [sys.executable, "manage.py", "worker", "relay"],
                                       processes.env, tmp_path).start())

    try:
        with own_stack(fault_cluster, broker, broker_dir, tmp_path, env={"RELAY_PARTITIONS": str(PARTITIONS)},
                       before_start=more_relays) as stack:
            stack.relays = [stack.relay, *extra]
            yield stack
    finally:
        for process in extra:
            process.stop()


def partition_of(process: ServerProcess) -> int | None:
    """The partition a relay process took, from its log (None: standing by)."""
    found = re.findall(r"partition (\d+) of \d+", process.log_path.read_text(errors="replace"))
    return int(found[-1]) if found else None


@pytest.mark.slow
def test_three_relays_one_killed_mid_load_its_partition_resumes_and_nothing_is_lost(partitioned_stack):
    stack = partitioned_stack
    world = ChatWorld(stack)
    try:
        # given: the three chats spread over partitions, messages flowing through all relays
        load = SteadyLoad(stack.url, world.chats, rate=40).start()
        load.wait_accepted(40)
        wait_until(lambda: sum(partition_of(p) is not None for p in stack.relays) == PARTITIONS, 10,
                   "three relays active")
        group = world.chats[2]
        victim = next(p for p in stack.relays if partition_of(p) == group.id % PARTITIONS)
        spare = next(p for p in stack.relays if partition_of(p) is None)

        # when: the group's relay dies outright; the spare is to take its partition
        victim.kill()
        killed_at = time.monotonic()
        resumed = world.live_again_after(killed_at, load, within=10, chat=group)
        load.wait_accepted(40)
        load.stop()
        world.settle(load)

        # then: the group's messages live again within seconds, at every member, by the spare
        outcome = world.check(load)
        print(f"relay of partition {group.id % PARTITIONS} killed: the group resumed after {resumed} s; {outcome}")
        late = {name: t for name, t in resumed.items() if t is None or t > RESUME_WITHIN}
        assert late == {}, f"the group not live within {RESUME_WITHIN} s of the kill: {resumed}\n{stack.logs()}"
        assert partition_of(spare) == group.id % PARTITIONS
        # every accepted message reached every member, live in per-chat order
        assert outcome.missing == {}, f"{outcome}\n{stack.logs()}"
        assert outcome.unexpected == {}
        assert outcome.out_of_order == {}
        assert outcome.refused == {}
        status, body = stack.health()
        assert (status, body["status"]) == (200, "ok"), body
        assert [p["relay"] for p in body["partitions"]] == ["running"] * PARTITIONS
    finally:
        world.close()
