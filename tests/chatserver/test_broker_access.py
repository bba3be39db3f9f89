"""Broker-side access, checked from the attacker's side against a real Mosquitto.

The server's admin connection (`BrokerConnection`) applies `DynsecAccess` operations; phones
and attackers are `MqttProbe`s. No database: these run with or without pytest-django.

"Not delivered" is shown without sleeping where possible: after the forbidden publish was
acknowledged, the server publishes a marker to the same subscriber; Mosquitto delivers in
order, so a leak would arrive before the marker.
"""

from __future__ import annotations

import itertools
import json
import queue
import random
import secrets
import shutil
import time
import re
from dataclasses import dataclass

import pytest

from chatserver.broker_access import (
    PRESENCE_FILTER,
    DynsecAccess,
    access_op_from_json,
    chat_topic,
    device_client_id,
    parse_device_client_id,
    parse_device_username,
    parse_event_topic,
    parse_presence_topic,
    presence_topic,
    rabbitmq_queue_client_id,
    rabbitmq_session_queues,
    rabbitmq_user_queues_regex,
    routing_key_topic,
    topic_routing_key,
    typing_topic,
    user_topic,
)
from chatserver.mqtt import BrokerConnection
from tests.support.mosquitto import MosquittoBroker, make_workdir
from tests.support.mqtt import MqttProbe

# Mosquitto's dynamic security and the admin connection's $CONTROL commands.
pytestmark = pytest.mark.mosquitto_only

REFUSED = 128  # SUBACK failure, MQTT 3.1.1
NOT_AUTHORIZED = 135  # CONNACK refusal as paho reports it (0x87)

# Ids far above what the database hands out: this module shares the session's broker.
_ids = itertools.count(random.randrange(10**8, 2 * 10**9, 10**5))
# Presence topics that may hold a retained message, cleared when the module ends.
_retained: set[str] = set()


def retained(topic: str) -> str:
    _retained.add(topic)
    return topic


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    user: int
    username: str
    password: str
    client_id: str

    @property
    def mqtt(self) -> dict:
        return {"username": self.username, "password": self.password, "client_id": self.client_id}


def commands(op: dict) -> list[dict]:
    """The broker commands of an access operation in its stored (JSON) form."""
    return DynsecAccess.commands(access_op_from_json(op))


def publishes(op: dict) -> list[tuple[str, bytes]]:
    return DynsecAccess.publishes(access_op_from_json(op))


def apply(conn: BrokerConnection, *ops: dict) -> list[tuple[dict, str | None]]:
    """Apply access operations; fail on any error that is not benign."""
    assert conn.connect(timeout=10)
    pending = conn.control([c for op in ops for c in DynsecAccess.commands(access_op_from_json(op))])
    assert conn.wait([pending], timeout=5), pending
    bad = [(c["command"], e) for c, e in pending.result if e and not DynsecAccess.is_benign(c, e)]
    assert bad == []
    return pending.result


def query(conn: BrokerConnection, *commands: dict) -> list[dict]:
    pending = conn.control(list(commands))
    assert conn.wait([pending], timeout=5), pending
    return [{k: v for k, v in r.items() if k != "correlationData"} for r in pending.responses]


def publish(conn: BrokerConnection, topic: str, payload: bytes, **kwargs) -> None:
    pending = conn.publish(topic, payload, **kwargs)
    assert conn.wait([pending], timeout=5), pending
    assert pending.error is None


def new_user(conn: BrokerConnection) -> int:
    user = next(_ids)
    apply(conn, {"op": "user_add", "user": user})
    return user


def new_device(conn: BrokerConnection, user: int) -> Device:
    device = Device(
        user=user,
        username=f"dev-{secrets.token_hex(6)}",
        password=secrets.token_urlsafe(16),
        client_id=f"cid-{secrets.token_hex(6)}",
    )
    apply(conn, {"op": "device_add", "user": user, **device.mqtt})
    return device


def new_chat(conn: BrokerConnection, *members: int) -> int:
    chat = next(_ids)
    apply(conn, {"op": "chat_add", "chat": chat},
          *({"op": "member_grant", "chat": chat, "user": m} for m in members))
    return chat


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(mosquitto):
    """The server's side: one admin connection, baseline applied, like the relay's."""
    conn = BrokerConnection(
        host=mosquitto.host, port=mosquitto.port,
        username=mosquitto.admin_username, password=mosquitto.admin_password,
        client_id=f"test-admin-{secrets.token_hex(4)}", keepalive=10,
    )
    assert conn.connect(timeout=10)
    pending = conn.control(DynsecAccess.baseline())
    assert conn.wait([pending], timeout=5)
    assert all(e is None or DynsecAccess.is_benign(c, e) for c, e in pending.result)
    yield conn
    # Leave no retained presence behind for the other tests' listeners.
    clear = [conn.publish(topic, b"", retain=True) for topic in sorted(_retained)]
    conn.wait(clear, timeout=5)
    conn.close()


@pytest.fixture
def probes(mosquitto):
    """Make MqttProbes on the session broker; all closed after the test."""
    made: list[MqttProbe] = []

    def make(**kwargs) -> MqttProbe:
        probe = MqttProbe(mosquitto.host, kwargs.pop("port", mosquitto.port), **kwargs)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


@pytest.fixture
def observe(mosquitto, probes):
    """A server-side listener (admin account) on the presence topics of one user.

    One user's, not PRESENCE_FILTER: the session's broker keeps other tests' retained
    presence. Retained presence left by this module is cleared at its end (see `admin`).
    """
    def make(user: int) -> MqttProbe:
        probe = probes()
        assert probe.connect(mosquitto.admin_username, mosquitto.admin_password,
                             f"observer-{secrets.token_hex(4)}", clean_session=True) == 0
        assert probe.subscribe(f"chat/presence/{user}/+") == 1
        return probe

    return make


@pytest.fixture
def own_broker():
    """A broker of the test's own, to freeze, kill and restart without disturbing others."""
    workdir = make_workdir()
    broker = MosquittoBroker(workdir)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def phone(probes, device: Device, *topics: str, **connect) -> MqttProbe:
    probe = probes()
    assert probe.connect(**device.mqtt, **connect) == 0
    for topic in topics:
        assert probe.subscribe(topic) == 1, topic
    return probe


# --- authentication --------------------------------------------------------------------------


def test_anonymous_login_is_refused(probes):
    # given / when
    code = probes().connect(None, None, f"anon-{secrets.token_hex(4)}")
    # then
    assert code == NOT_AUTHORIZED


def test_wrong_password_and_unknown_username_are_refused(admin, probes):
    # given
    device = new_device(admin, new_user(admin))
    # when / then
    assert probes().connect(device.username, "wrong", device.client_id) == NOT_AUTHORIZED
    assert probes().connect("nobody-" + secrets.token_hex(4), "x", "cid-x") == NOT_AUTHORIZED


def test_a_device_login_needs_its_own_client_id(admin, probes):
    # given
    device = new_device(admin, new_user(admin))
    # when / then
    assert probes().connect(device.username, device.password, "another-id") == NOT_AUTHORIZED
    assert probes().connect(device.username, device.password, device.client_id) == 0


# --- subscribe rights ------------------------------------------------------------------------


def test_a_device_subscribes_to_its_user_topic_and_receives_server_events(admin, probes):
    # given
    user = new_user(admin)
    probe = phone(probes, new_device(admin, user), user_topic(user))
    probe.check_events = False  # the "event" below is a stand-in, not a whole one
    # when
    publish(admin, user_topic(user), b'{"type":"friend.requested"}')
    # then
    [received] = probe.wait_for(1)
    assert (received.topic, received.payload, received.qos) == (
        user_topic(user), b'{"type":"friend.requested"}', 1)


@pytest.mark.parametrize("pattern", [
    "chat/users/{other}",
    "#",
    "chat/#",
    "chat/users/+",
    "chat/+/{me}",
    "+/users/{me}",
    "chat/users/{me}/#",
    "chat/chats/+",
    "chat/presence/+/+",
    "chat/presence/{me}/+",
    "$share/g/chat/users/{other}",
    "$share/g/chat/users/{me}",
    "$share/g/#",
    "$SYS/#",
    "$CONTROL/dynamic-security/#",
    "$CONTROL/dynamic-security/v1/response",
])
def test_foreign_topics_and_widening_wildcards_are_refused(admin, probes, pattern):
    # given
    me, other = new_user(admin), new_user(admin)
    probe = phone(probes, new_device(admin, me))
    # when
    code = probe.subscribe(pattern.format(me=me, other=other))
    # then: refused, and the connection is still usable
    assert code == REFUSED
    assert probe.subscribe(user_topic(me)) == 1


def test_websocket_listener_has_the_same_accounts_and_acls(mosquitto, admin, probes):
    # given
    me, other = new_user(admin), new_user(admin)
    probe = probes(port=mosquitto.ws_port, transport="websockets")
    # when
    assert probe.connect(**new_device(admin, me).mqtt) == 0
    # then
    assert probe.subscribe(user_topic(me)) == 1
    assert probe.subscribe(user_topic(other)) == REFUSED
    publish(admin, user_topic(me), b"over websockets")
    assert probe.wait_for(1)[0].payload == b"over websockets"


# --- chat membership -------------------------------------------------------------------------


def test_chat_topic_is_refused_before_the_grant_and_allowed_after(admin, probes):
    # given
    user = new_user(admin)
    device = new_device(admin, user)
    chat = new_chat(admin)
    probe = phone(probes, device)
    assert probe.subscribe(chat_topic(chat)) == REFUSED
    # when
    apply(admin, {"op": "member_grant", "chat": chat, "user": user})
    # then: the grant disconnects the user's live connections (Mosquitto 2.0.11), and the
    # reconnected device may subscribe
    assert probe.wait_disconnected(timeout=2)
    assert probe.connect(**device.mqtt) == 0
    assert probe.session_present is True
    assert probe.subscribe(chat_topic(chat)) == 1
    publish(admin, chat_topic(chat), b"welcome")
    assert probe.wait_for(1)[0].payload == b"welcome"


def test_a_member_revoked_while_offline_gets_nothing_of_the_chat_on_return(admin, probes):
    # given: a member with a persistent session on the chat topic, gone offline
    user = new_user(admin)
    device = new_device(admin, user)
    chat = new_chat(admin, user)
    probe = phone(probes, device, user_topic(user), chat_topic(chat))
    probe.disconnect()
    publish(admin, chat_topic(chat), b"queued before the revoke")
    # when
    apply(admin, {"op": "member_revoke", "chat": chat, "user": user})
    publish(admin, chat_topic(chat), b"after the revoke")
    publish(admin, user_topic(user), b"marker")
    # then: the session is back, its own topic delivers, the chat's messages do not
    assert probe.connect(**device.mqtt) == 0
    assert probe.session_present is True
    received = probe.wait_for(1, topic=user_topic(user))
    assert [(m.topic, m.payload) for m in probe.messages] == [(user_topic(user), b"marker")]
    assert received[0].payload == b"marker"
    assert probe.subscribe(chat_topic(chat)) == REFUSED


def test_a_member_revoked_while_online_is_disconnected_and_receives_nothing_after(admin, probes):
    # given
    user = new_user(admin)
    device = new_device(admin, user)
    chat = new_chat(admin, user)
    probe = phone(probes, device, user_topic(user), chat_topic(chat))
    # when
    apply(admin, {"op": "member_revoke", "chat": chat, "user": user})
    # then
    assert probe.wait_disconnected(timeout=2)
    assert probe.connect(**device.mqtt) == 0
    publish(admin, chat_topic(chat), b"after the revoke")
    publish(admin, user_topic(user), b"marker")
    probe.wait_for(1, topic=user_topic(user))
    assert [m.payload for m in probe.messages] == [b"marker"]


def test_a_revoke_does_not_disconnect_the_other_members(admin, probes):
    # given
    staying, leaving = new_user(admin), new_user(admin)
    chat = new_chat(admin, staying, leaving)
    probe = phone(probes, new_device(admin, staying), chat_topic(chat))
    # when
    apply(admin, {"op": "member_revoke", "chat": chat, "user": leaving})
    publish(admin, chat_topic(chat), b"still here")
    # then
    assert probe.wait_for(1)[0].payload == b"still here"
    assert not probe.disconnected.is_set()


def test_chat_remove_ends_every_member_s_access(admin, probes):
    # given
    user = new_user(admin)
    device = new_device(admin, user)
    chat = new_chat(admin, user)
    probe = phone(probes, device, user_topic(user), chat_topic(chat))
    # when
    apply(admin, {"op": "chat_remove", "chat": chat})
    # then
    assert probe.wait_disconnected(timeout=2)
    assert probe.connect(**device.mqtt) == 0
    publish(admin, chat_topic(chat), b"after removal")
    publish(admin, user_topic(user), b"marker")
    probe.wait_for(1, topic=user_topic(user))
    assert [m.payload for m in probe.messages] == [b"marker"]
    assert probe.subscribe(chat_topic(chat)) == REFUSED


def test_a_chat_s_typing_topic_is_its_members_only_and_ends_with_the_membership(admin, probes):
    # given: a member and an outsider, both connected
    member, outsider = new_user(admin), new_user(admin)
    device = new_device(admin, member)
    chat = new_chat(admin, member)
    probe = phone(probes, device, user_topic(member))
    # then: the member may follow the chat's typing (at QoS 0, as phones do); the outsider may not
    assert phone(probes, new_device(admin, outsider)).subscribe(typing_topic(chat), qos=0) == REFUSED
    assert probe.subscribe(typing_topic(chat), qos=0) == 0
    publish(admin, typing_topic(chat), b"typing", qos=0)
    assert [(m.topic, m.qos) for m in probe.wait_for(1)] == [(typing_topic(chat), 0)]

    # when: the member is removed
    apply(admin, {"op": "member_revoke", "chat": chat, "user": member})

    # then: disconnected; back with its session, the typing subscription it still holds
    # delivers nothing, and a new one is refused
    assert probe.wait_disconnected(timeout=2)
    probe.clear()
    assert probe.connect(**device.mqtt) == 0 and probe.session_present is True
    publish(admin, typing_topic(chat), b"after the revoke", qos=0)
    publish(admin, user_topic(member), b"marker")
    probe.wait_for(1, topic=user_topic(member))
    assert [m.payload for m in probe.messages] == [b"marker"]
    assert probe.subscribe(typing_topic(chat), qos=0) == REFUSED


def test_a_chat_made_before_the_typing_topic_gets_it_from_a_replayed_chat_add(admin, probes):
    # given: a chat role as the version before the typing topic made it, and a member
    # connected to the chat's topic
    user = new_user(admin)
    device = new_device(admin, user)
    chat = next(_ids)
    old_role = {"command": "createRole", "rolename": DynsecAccess.chat_role(chat), "acls": [
        {"acltype": "subscribeLiteral", "topic": chat_topic(chat), "allow": True},
        {"acltype": "publishClientReceive", "topic": chat_topic(chat), "allow": True},
    ]}
    assert query(admin, old_role, {"command": "addGroupRole", "groupname": DynsecAccess.user_group(user),
                                   "rolename": DynsecAccess.chat_role(chat)}) == [
        {"command": "createRole"}, {"command": "addGroupRole"}]
    probe = phone(probes, device, user_topic(user), chat_topic(chat))
    assert probe.subscribe(typing_topic(chat), qos=0) == REFUSED

    # when: the upgrade replays the chat's ChatAdd (chats/migrations/0007)
    result = apply(admin, {"op": "chat_add", "chat": chat})

    # then: the role has the typing grants (the two added ACLs: no error); the member's
    # connection is dropped as on any change of its roles (Mosquitto 2.0.11), and back
    # with its session it follows the chat's typing, its chat topic still there
    assert [error for _, error in result] == ["Role already exists", None, None]
    assert probe.wait_disconnected(timeout=2)
    assert probe.connect(**device.mqtt) == 0 and probe.session_present is True
    assert probe.subscribe(typing_topic(chat), qos=0) == 0
    publish(admin, typing_topic(chat), b"typing", qos=0)
    publish(admin, chat_topic(chat), b"message")
    probe.wait_for(2)
    assert sorted((m.topic, m.payload) for m in probe.messages) == [
        (chat_topic(chat), b"message"), (typing_topic(chat), b"typing")]


# --- publish rights --------------------------------------------------------------------------


def test_users_cannot_publish_to_chat_or_user_topics(admin, probes):
    # given: a member listening on the chat and on its user topic
    attacker, victim = new_user(admin), new_user(admin)
    chat = new_chat(admin, attacker, victim)
    victim_probe = phone(probes, new_device(admin, victim), user_topic(victim), chat_topic(chat), typing_topic(chat))
    attacker_probe = phone(probes, new_device(admin, attacker))
    # when: Mosquitto acknowledges forbidden publishes on 3.1.1, and drops them
    assert attacker_probe.publish(chat_topic(chat), b"forged chat event") is True
    assert attacker_probe.publish(typing_topic(chat), b"forged typing") is True
    assert attacker_probe.publish(user_topic(victim), b"forged user event") is True
    assert attacker_probe.publish(user_topic(attacker), b"to itself") is True
    for topic in (chat_topic(chat), typing_topic(chat), user_topic(victim)):
        publish(admin, topic, b"marker")
    # then
    victim_probe.wait_for(3)
    assert [(m.topic, m.payload) for m in victim_probe.messages] == [
        (chat_topic(chat), b"marker"), (typing_topic(chat), b"marker"), (user_topic(victim), b"marker")]


def test_users_cannot_send_broker_commands(admin, probes):
    # given
    attacker = phone(probes, new_device(admin, new_user(admin)))
    evil = f"evil-{secrets.token_hex(4)}"
    command = {"commands": [{"command": "createClient", "username": evil, "password": "x"}]}
    # when
    assert attacker.publish(DynsecAccess.CONTROL_TOPIC, json.dumps(command)) is True
    # then
    assert query(admin, {"command": "getClient", "username": evil}) == [
        {"command": "getClient", "error": "Client not found"}]


def test_presence_on_its_own_topic_reaches_the_server_and_on_another_s_does_not(admin, probes, observe):
    # given
    me, other = new_user(admin), new_user(admin)
    mine, theirs, sibling = new_device(admin, me), new_device(admin, other), new_device(admin, me)
    observer_me, observer_other = observe(me), observe(other)
    probe = phone(probes, mine)
    # when
    assert probe.publish(retained(presence_topic(other, theirs.client_id)), "offline", retain=True)
    assert probe.publish(retained(presence_topic(other, "made-up")), "online", retain=True)
    # ...nor a device of its own user that does not exist, nor another device of its user
    assert probe.publish(retained(presence_topic(me, "made-up")), "online", retain=True)
    assert probe.publish(retained(presence_topic(me, sibling.client_id)), "offline", retain=True)
    assert probe.publish(retained(presence_topic(me, mine.client_id)), "online", retain=True)
    publish(admin, presence_topic(other, "marker"), b"marker")
    # then
    observer_me.wait_for(1)
    observer_other.wait_for(1)
    assert [(m.topic, m.payload) for m in observer_me.messages] == [
        (presence_topic(me, mine.client_id), b"online")]
    assert [(m.topic, m.payload) for m in observer_other.messages] == [
        (presence_topic(other, "marker"), b"marker")]


def test_an_install_of_the_first_version_is_closed_by_replaying_its_users_and_devices(admin, probes, observe):
    # given: a user and a device as the first version made them: the user's role let any
    # of its devices publish under chat/presence/<user>/+; the device had no role of its own
    user = next(_ids)
    query(admin,
          {"command": "createRole", "rolename": f"user-{user}", "acls": [
              {"acltype": "subscribeLiteral", "topic": user_topic(user), "allow": True},
              {"acltype": "publishClientReceive", "topic": user_topic(user), "allow": True},
              {"acltype": "publishClientSend", "topic": f"chat/presence/{user}/+", "allow": True}]},
          {"command": "createGroup", "groupname": f"user-{user}", "roles": [{"rolename": f"user-{user}"}]})
    device = Device(user, f"dev-{secrets.token_hex(6)}", secrets.token_urlsafe(16), f"cid-{secrets.token_hex(6)}")
    query(admin, {"command": "createClient", "username": device.username, "password": device.password,
                  "clientid": device.client_id, "groups": [{"groupname": f"user-{user}"}]})
    observer = observe(user)
    old = phone(probes, device)
    assert old.publish(retained(presence_topic(user, "made-up")), "online", retain=True)
    observer.wait_for(1)
    assert [m.topic for m in observer.messages] == [presence_topic(user, "made-up")]  # the hole
    old.close()
    observer.clear()

    # when: what the upgrade (accounts migration 0004) queues for every user and device
    results = apply(admin, {"op": "user_add", "user": user}, {"op": "device_add", "user": user, **device.mqtt})

    # then: the device publishes on its own topic only, and still receives its user's
    assert all(error is None or DynsecAccess.is_benign(command, error) for command, error in results), results
    new = phone(probes, device, user_topic(user))
    assert new.publish(retained(presence_topic(user, "made-up-again")), "online", retain=True)
    assert new.publish(retained(presence_topic(user, device.client_id)), "online", retain=True)
    publish(admin, user_topic(user), b'{"marker": 1}')
    observer.wait_for(1)
    new.wait_for(1)
    assert [m.topic for m in observer.messages] == [presence_topic(user, device.client_id)]
    assert [m.payload for m in new.messages] == [b'{"marker": 1}']


def test_the_last_will_on_its_own_presence_topic_fires(admin, probes, observe):
    # given
    device = new_device(admin, new_user(admin))
    observer = observe(device.user)
    topic = retained(presence_topic(device.user, device.client_id))
    probe = phone(probes, device, will={"topic": topic, "payload": "offline"})
    assert probe.publish(topic, "online", retain=True)
    observer.wait_for(1)
    # when: the app dies without DISCONNECT
    probe.drop()
    # then
    [_, will] = observer.wait_for(2)
    assert (will.topic, will.payload) == (topic, b"offline")


# --- sessions and devices --------------------------------------------------------------------


def test_another_account_cannot_take_over_a_device_s_client_id(admin, probes):
    # given: A online with a persistent session
    a_user, b_user = new_user(admin), new_user(admin)
    a_device, b_device = new_device(admin, a_user), new_device(admin, b_user)
    a_probe = phone(probes, a_device, user_topic(a_user))
    b_probe = probes()
    # when: B, with valid credentials of its own, presents A's client id
    code = b_probe.connect(b_device.username, b_device.password, a_device.client_id)
    # then: refused, and A is still connected with its session
    assert code == NOT_AUTHORIZED
    publish(admin, user_topic(a_user), b"for A, live")
    assert a_probe.wait_for(1)[0].payload == b"for A, live"
    assert not a_probe.disconnected.is_set()

    # and while A is away, its queued messages stay A's
    a_probe.disconnect()
    publish(admin, user_topic(a_user), b"for A, queued")
    assert b_probe.connect(b_device.username, b_device.password, a_device.client_id) == NOT_AUTHORIZED
    assert a_probe.connect(**a_device.mqtt) == 0
    assert a_probe.session_present is True
    assert a_probe.wait_for(2)[1].payload == b"for A, queued"
    assert b_probe.messages == []


def test_adding_a_device_does_not_disconnect_the_user_s_others(admin, probes):
    # given
    user = new_user(admin)
    probe = phone(probes, new_device(admin, user), user_topic(user))
    # when
    second = new_device(admin, user)
    # then
    assert phone(probes, second, user_topic(user))
    publish(admin, user_topic(user), b"both")
    assert probe.wait_for(1)[0].payload == b"both"
    assert not probe.disconnected.is_set()


def test_device_remove_disconnects_at_once_and_refuses_the_login(admin, probes, observe):
    # given
    device = new_device(admin, new_user(admin))
    observer = observe(device.user)
    topic = retained(presence_topic(device.user, device.client_id))
    probe = phone(probes, device, user_topic(device.user), will={"topic": topic, "payload": "offline"})
    assert probe.publish(topic, "online", retain=True)
    observer.wait_for(1)
    # when
    started = time.monotonic()
    apply(admin, {"op": "device_remove", "username": device.username, "user": device.user, "client_id": device.client_id})
    # then
    assert probe.wait_disconnected(timeout=2)
    assert time.monotonic() - started < 1.0
    assert probe.connect(**device.mqtt) == NOT_AUTHORIZED
    # The kick does NOT send the Last Will: the server clears the device's presence itself.
    publish(admin, topic, b"", retain=True)
    [_, cleared] = observer.wait_for(2)
    assert (cleared.topic, cleared.payload) == (topic, b"")


def test_retained_presence_of_a_removed_device_stays_until_the_server_clears_it(admin, probes, observe):
    # given: a device left a retained "online", then was removed
    device = new_device(admin, new_user(admin))
    topic = retained(presence_topic(device.user, device.client_id))
    probe = phone(probes, device)
    assert probe.publish(topic, "online", retain=True)
    apply(admin, {"op": "device_remove", "username": device.username, "user": device.user, "client_id": device.client_id})
    # when: the server subscribes afresh (as after a relay restart)
    fresh = observe(device.user)
    # then: Mosquitto still hands it out (check_retain_source does not drop it)
    [stale] = fresh.wait_for(1)
    assert (stale.topic, stale.payload, stale.retain) == (topic, b"online", True)
    # and an empty retained message from the server removes it
    publish(admin, topic, b"", retain=True)
    again = observe(device.user)
    publish(admin, presence_topic(device.user, "marker"), b"marker")
    assert [m.payload for m in again.wait_for(1)] == [b"marker"]


# --- replays ---------------------------------------------------------------------------------


def _snapshot(conn: BrokerConnection, users, devices, chats) -> list[dict]:
    return query(
        conn,
        *({"command": "getGroup", "groupname": DynsecAccess.user_group(u)} for u in users),
        *({"command": "getRole", "rolename": DynsecAccess.user_role(u)} for u in users),
        *({"command": "getClient", "username": d.username} for d in devices),
        *({"command": "getRole", "rolename": DynsecAccess.chat_role(c)} for c in chats),
    )


def test_replaying_any_suffix_of_the_operations_ends_in_the_same_state(admin, probes):
    # given: a history applied once
    u1, u2 = next(_ids), next(_ids)
    c1, c2 = next(_ids), next(_ids)
    d1, d2, d3 = (
        Device(u, f"dev-{secrets.token_hex(6)}", secrets.token_urlsafe(12), f"cid-{secrets.token_hex(6)}")
        for u in (u1, u2, u1)
    )
    ops = [
        {"op": "user_add", "user": u1},
        {"op": "user_add", "user": u2},
        {"op": "device_add", "user": u1, **d1.mqtt},
        {"op": "device_add", "user": u2, **d2.mqtt},
        {"op": "device_add", "user": u1, **d3.mqtt},
        {"op": "chat_add", "chat": c1},
        {"op": "member_grant", "chat": c1, "user": u1},
        {"op": "member_grant", "chat": c1, "user": u2},
        {"op": "chat_add", "chat": c2},
        {"op": "member_grant", "chat": c2, "user": u1},
        {"op": "member_revoke", "chat": c1, "user": u2},
        {"op": "device_remove", "username": d3.username, "user": d3.user, "client_id": d3.client_id},
        {"op": "chat_remove", "chat": c2},
    ]
    apply(admin, *ops)
    state = _snapshot(admin, (u1, u2), (d1, d2, d3), (c1, c2))
    # when: the relay died after applying, before deleting its rows, at every point
    for start in range(len(ops)):
        apply(admin, *ops[start:])  # asserts every error is benign
    apply(admin, *ops)
    # then
    assert _snapshot(admin, (u1, u2), (d1, d2, d3), (c1, c2)) == state
    assert phone(probes, d1).subscribe(chat_topic(c1)) == 1
    assert phone(probes, d2).subscribe(chat_topic(c1)) == REFUSED
    assert probes().connect(**d3.mqtt) == NOT_AUTHORIZED


# --- the commands themselves -----------------------------------------------------------------


def test_topics():
    assert user_topic(5) == "chat/users/5"
    assert chat_topic(7) == "chat/chats/7"
    assert typing_topic(7) == "chat/chats/7/typing"
    assert presence_topic(5, "abc") == "chat/presence/5/abc"
    assert parse_presence_topic("chat/presence/5/abc") == (5, "abc")
    assert parse_presence_topic("chat/presence/x/abc") is None
    assert parse_presence_topic("chat/users/5") is None
    with pytest.raises(ValueError):
        presence_topic(5, "a/b")
    with pytest.raises(ValueError):
        presence_topic(5, "+")
    with pytest.raises(ValueError):
        user_topic("5")
    with pytest.raises(ValueError):
        chat_topic(0)


def test_commands_user_add():
    assert commands({"op": "user_add", "user": 5}) == [
        {"command": "createRole", "rolename": "user-5", "acls": [
            {"acltype": "subscribeLiteral", "topic": "chat/users/5", "allow": True},
            {"acltype": "publishClientReceive", "topic": "chat/users/5", "allow": True},
        ]},
        {"command": "createGroup", "groupname": "user-5", "roles": [{"rolename": "user-5"}]},
        {"command": "removeRoleACL", "rolename": "user-5", "acltype": "publishClientSend",
         "topic": "chat/presence/5/+"},
    ]


def test_commands_device_add_and_remove():
    op = {"op": "device_add", "user": 5, "username": "u", "password": "p", "client_id": "c"}
    assert commands(op) == [
        {"command": "createRole", "rolename": "device-u", "acls": [
            {"acltype": "publishClientSend", "topic": "chat/presence/5/c", "allow": True}]},
        {"command": "createClient", "username": "u", "password": "p", "clientid": "c",
         "groups": [{"groupname": "user-5"}], "roles": [{"rolename": "device-u"}]},
        {"command": "modifyClient", "username": "u",
         "groups": [{"groupname": "user-5"}], "roles": [{"rolename": "device-u"}]},
    ]
    assert commands({"op": "device_remove", "user": 5, "username": "u", "client_id": "c"}) == [
        {"command": "deleteClient", "username": "u"},
        {"command": "deleteRole", "rolename": "device-u"},
    ]


def test_commands_chats_and_members():
    typing = [
        {"acltype": "subscribeLiteral", "topic": "chat/chats/7/typing", "allow": True},
        {"acltype": "publishClientReceive", "topic": "chat/chats/7/typing", "allow": True},
    ]
    assert commands({"op": "chat_add", "chat": 7}) == [
        {"command": "createRole", "rolename": "chat-7", "acls": [
            {"acltype": "subscribeLiteral", "topic": "chat/chats/7", "allow": True},
            {"acltype": "publishClientReceive", "topic": "chat/chats/7", "allow": True},
            *typing,
        ]},
        # a role made before the typing topic gets it; "already exists" for a new one
        *({"command": "addRoleACL", "rolename": "chat-7", **acl} for acl in typing),
    ]
    assert commands({"op": "member_grant", "chat": 7, "user": 5}) == [
        {"command": "addGroupRole", "groupname": "user-5", "rolename": "chat-7"},
    ]
    assert commands({"op": "member_revoke", "chat": 7, "user": 5}) == [
        {"command": "removeGroupRole", "groupname": "user-5", "rolename": "chat-7"},
    ]
    assert commands({"op": "chat_remove", "chat": 7}) == [
        {"command": "deleteRole", "rolename": "chat-7"},
    ]


def test_commands_baseline():
    assert DynsecAccess.baseline() == [
        {"command": "setDefaultACLAccess", "acls": [
            {"acltype": "publishClientSend", "allow": False},
            {"acltype": "publishClientReceive", "allow": False},
            {"acltype": "subscribe", "allow": False},
            {"acltype": "unsubscribe", "allow": True},
        ]},
        {"command": "addRoleACL", "rolename": "admin", "acltype": "publishClientSend",
         "topic": "chat/#", "allow": True},
    ]


@pytest.mark.parametrize("op", [
    {"op": "user_delete", "user": 5},
    {"user": 5},
    {"op": "user_add"},
    {"op": "user_add", "user": "5"},
    {"op": "user_add", "user": True},
    {"op": "device_add", "user": 5, "username": "u", "password": "p", "client_id": "a/b"},
    {"op": "device_add", "user": 5, "username": "", "password": "p", "client_id": "c"},
    {"op": "member_grant", "chat": 7},
    {"op": "member_grant", "chat": 7, "user": 5, "extra": 1},
    {"op": "device_remove", "username": "u"},
    ["user_add", 5],
])
def test_commands_refuse_bad_operations(op):
    with pytest.raises(ValueError):
        commands(op)


def test_is_benign():
    assert DynsecAccess.is_benign({"command": "createClient"}, "Client already exists")
    assert DynsecAccess.is_benign({"command": "createRole"}, "Role already exists")
    assert DynsecAccess.is_benign({"command": "createGroup"}, "Group already exists")
    assert DynsecAccess.is_benign({"command": "deleteClient"}, "Client not found")
    assert DynsecAccess.is_benign({"command": "deleteRole"}, "Role not found")
    assert DynsecAccess.is_benign({"command": "addGroupRole"}, "Group is already in this role")
    assert DynsecAccess.is_benign({"command": "addGroupRole"}, "Role not found")
    assert DynsecAccess.is_benign({"command": "removeGroupRole"}, "Role not found")
    assert DynsecAccess.is_benign({"command": "addRoleACL"}, "ACL with this topic already exists")
    assert not DynsecAccess.is_benign({"command": "createClient"}, "Group not found")
    assert not DynsecAccess.is_benign({"command": "addGroupRole"}, "Group not found")
    assert not DynsecAccess.is_benign({"command": "deleteRole"}, "Client not found")
    assert not DynsecAccess.is_benign({"command": "bogus"}, "Unknown command")


# --- BrokerConnection ------------------------------------------------------------------------


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling a condition, not waiting a fixed time
    return True


def admin_connection(broker: MosquittoBroker) -> BrokerConnection:
    conn = BrokerConnection(
        host=broker.host, port=broker.port,
        username=broker.admin_username, password=broker.admin_password,
        client_id=f"test-conn-{secrets.token_hex(4)}",
    )
    assert conn.connect(timeout=10)
    return conn


def test_connection_publish_is_acknowledged_and_delivered(mosquitto, admin, probes):
    # given
    user = new_user(admin)
    probe = phone(probes, new_device(admin, user), user_topic(user))
    # when
    pendings = [admin.publish(user_topic(user), f"{i}".encode()) for i in range(50)]
    # then
    assert admin.wait(pendings, timeout=5)
    assert all(p.done and p.error is None for p in pendings)
    assert [m.payload for m in probe.wait_for(50)] == [f"{i}".encode() for i in range(50)]


def test_connection_qos0_publishes_and_commands_leave_nothing_behind(own_broker, probes):
    """(Broker commands and QoS 0 publishes both get a "published" from paho that nobody
    waits for: before, each one stayed in `_early_acks` for the connection's life.)"""
    # given
    conn = admin_connection(own_broker)
    try:
        user = new_user(conn)
        probe = probes(port=own_broker.port)
        assert probe.connect(**new_device(conn, user).mqtt) == 0
        assert probe.subscribe(user_topic(user)) == 1
        own_broker.freeze()
        time.sleep(0.3)  # what the broker sent before it froze is read by now
        answered = conn.last_answer
        # when: QoS 0 publishes to a frozen broker (written to the socket, never answered)
        pendings = [conn.publish(user_topic(user), f"{i}".encode(), qos=0) for i in range(200)]
        time.sleep(0.5)
        # then: done at once, yet no answer is counted (the commands of new_user and
        # new_device were answered: nothing of theirs is kept either)...
        assert all(p.done and p.error is None for p in pendings)
        assert conn.last_answer == answered
        own_broker.thaw()
        # ...they arrive once the broker runs again, and nothing is kept for them
        assert len(probe.wait_for(200, timeout=10)) == 200
        assert not conn._early_acks and not conn._untracked_mids
    finally:
        own_broker.thaw()
        conn.close()


def test_connection_control_answers_each_command_in_order(admin):
    # given
    chat = next(_ids)
    create = commands({"op": "chat_add", "chat": chat})[0]
    batch = [create, dict(create), {"command": "bogus"}]
    # when
    pending = admin.control(batch)
    # then
    assert admin.wait([pending], timeout=5)
    assert pending.result == [
        (batch[0], None), (batch[1], "Role already exists"), (batch[2], "Unknown command")]
    assert "correlationData" not in batch[0]


def test_connection_reports_a_publish_the_broker_refused(admin):
    # when: the admin may publish under chat/ only
    pending = admin.publish("elsewhere/topic", b"x")
    # then
    assert admin.wait([pending], timeout=5)
    assert pending.error == "Not authorized"


def test_connection_refuses_an_oversized_payload_itself_and_stays_connected(admin):
    # given
    topic = user_topic(next(_ids))
    # when
    pending = admin.publish(topic, b"x" * (admin.max_payload + 1))
    # then
    assert pending.done
    assert pending.error.startswith("payload too large")
    ok = admin.publish(topic, b"x" * admin.max_payload)
    assert admin.wait([ok], timeout=5) and ok.error is None
    assert admin.connected


def test_connection_wait_is_false_while_the_broker_is_frozen_and_true_after(own_broker):
    # given
    conn = admin_connection(own_broker)
    try:
        own_broker.freeze()
        # when
        pending = conn.publish(user_topic(1), b"while frozen")
        control = conn.control([{"command": "getDefaultACLAccess"}])
        started = time.monotonic()
        # then
        assert conn.wait([pending, control], timeout=0.3) is False
        assert time.monotonic() - started < 1.0
        own_broker.thaw()
        assert conn.wait([pending, control], timeout=5) is True
        assert control.result == [({"command": "getDefaultACLAccess"}, None)]
    finally:
        own_broker.thaw()
        conn.close()


def test_connection_never_completes_what_was_sent_before_a_crash_and_recovers(own_broker, probes):
    # given: messages sent into a hung broker, which then crashes
    conn = admin_connection(own_broker)
    try:
        own_broker.freeze()
        lost = conn.publish(user_topic(1), b"lost")
        lost_control = conn.control([{"command": "getDefaultACLAccess"}])
        assert conn.wait([lost], timeout=0.2) is False
        own_broker.kill()
        # when: the broker is back
        own_broker.start()
        observer = MqttProbe(own_broker.host, own_broker.port)
        try:
            assert observer.connect(own_broker.admin_username, own_broker.admin_password,
                                    "observer", clean_session=True) == 0
            assert observer.subscribe(user_topic(1)) == 1
            assert conn.connect(timeout=10)
            # then: the old pendings failed for good (paho does not resend them)...
            assert lost.failed and lost_control.failed
            assert conn.wait([lost, lost_control], timeout=0.1) is False
            # ...and the connection works again
            fresh = conn.publish(user_topic(1), b"after")
            assert conn.wait([fresh], timeout=5)
            assert [m.payload for m in observer.wait_for(1)] == [b"after"]
        finally:
            observer.close()
    finally:
        conn.close()


def test_connection_reconnects_after_a_graceful_restart(own_broker):
    # given
    conn = admin_connection(own_broker)
    try:
        # when
        own_broker.restart()
        # then
        assert conn.connect(timeout=10)
        pending = conn.control([{"command": "getDefaultACLAccess"}])
        assert conn.wait([pending], timeout=5)
    finally:
        conn.close()


def test_connection_fails_at_once_while_disconnected(own_broker):
    # given
    conn = admin_connection(own_broker)
    try:
        own_broker.stop()
        assert wait_until(lambda: not conn.connected, timeout=5)
        # when
        pending = conn.publish(user_topic(1), b"x")
        control = conn.control([{"command": "getDefaultACLAccess"}])
        # then
        assert not conn.connected
        assert pending.failed and control.failed
        assert conn.wait([pending, control], timeout=5) is False
    finally:
        conn.close()


def test_connection_subscriptions_deliver_and_survive_a_restart(own_broker, probes):
    # given
    conn = admin_connection(own_broker)
    received: queue.Queue = queue.Queue()
    try:
        conn.subscribe(PRESENCE_FILTER, lambda topic, payload, retain: received.put((topic, payload, retain)))
        publish(conn, presence_topic(1, "x"), b"one")
        assert received.get(timeout=5) == (presence_topic(1, "x"), b"one", False)
        own_broker.restart()
        assert conn.connect(timeout=10)
        # when
        publish(conn, presence_topic(1, "x"), b"two")
        # then
        assert received.get(timeout=5) == (presence_topic(1, "x"), b"two", False)
    finally:
        conn.close()


def test_removing_a_device_clears_its_retained_presence_and_nothing_else_publishes():
    assert publishes(
        {"op": "device_remove", "username": "device-9", "user": 5, "client_id": "chat-5-9"}
    ) == [("chat/presence/5/chat-5-9", b"")]
    assert publishes({"op": "member_grant", "chat": 1, "user": 5}) == []


def test_rabbitmq_names_round_trip_and_patterns_are_no_topics():
    assert topic_routing_key("chat/presence/5/chat-5-9") == "chat.presence.5.chat-5-9"
    assert routing_key_topic("chat.presence.5.chat-5-9") == "chat/presence/5/chat-5-9"
    assert [routing_key_topic(k) for k in ("#", "chat.*", "chat.+", "", "a\x00")] == [None] * 5
    assert rabbitmq_session_queues("chat-5-9") == ("mqtt-subscription-chat-5-9qos0", "mqtt-subscription-chat-5-9qos1")
    assert rabbitmq_session_queues("a/b") == ()
    assert rabbitmq_queue_client_id("mqtt-subscription-chat-5-9qos1") == "chat-5-9"
    assert rabbitmq_queue_client_id("some-queue") is None
    assert parse_device_client_id(device_client_id(5, 9)) == (5, 9)
    assert [parse_device_client_id(c) for c in ("chat-relay-host-1", "chat-05-9", "chat-5-9x")] == [None] * 3
    assert [parse_device_username(u) for u in ("device-9", "device-09", "device-", "chat-server")] == [9, None, None, None]
    # The session queues of user 5's devices, as the management API is asked for them.
    queues = re.compile(rabbitmq_user_queues_regex(5))
    assert [bool(queues.match(q)) for q in (*rabbitmq_session_queues(device_client_id(5, 123)),
                                            "mqtt-subscription-chat-55-1qos1", "mqtt-subscription-chat-5-1qos1x",
                                            "mqtt-subscription-chat-relay-host-1qos1")] == [True, True, False, False, False]


def test_event_topics_parse_back_to_their_ids_and_nothing_else_does():
    assert parse_event_topic(user_topic(12)) == ("users", 12)
    assert parse_event_topic(chat_topic(5)) == ("chats", 5)
    assert parse_event_topic(typing_topic(5)) == ("typing", 5)
    assert [parse_event_topic(t) for t in ("chat/chats/05", "chat/chats/5/x", "chat/chats/", "chat/presence/5/c",
                                           "chat/chats/+", "x/chat/chats/5", "chat/users/5/typing",
                                           "chat/chats/5/typing/x", "chat/chats/+/typing")] == [None] * 9
