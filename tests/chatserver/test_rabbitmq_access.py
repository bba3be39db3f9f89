"""Access on RabbitMQ from the attacker's side: a real node whose HTTP auth backend asks
Django (chatserver/broker_auth.py), the relay revoking over the management API
(chatserver/rabbit_access.py), and paho MQTT 3.1.1 clients as phones and attackers.
The stack is the module's own (tests/support/rabbit_auth.py); everything goes over HTTP
and MQTT, as from a phone.

RabbitMQ 3.10 answers a forbidden SUBSCRIBE or PUBLISH by closing the connection (no
SUBACK, no PUBACK): that is what "refused" means below."""

from __future__ import annotations

import json
import threading
import time
from itertools import count

import paho.mqtt.client as paho
import pytest
import requests

from chatserver.broker_access import AccessRefused, AccessUnavailable, DeviceRemove, rabbitmq_session_queues
from chatserver.rabbit_access import RabbitAccess
from tests.support.mqtt import MqttProbe
from tests.support.rabbit_auth import CACHE_TTL
from tests.support.stack import ServerProcess, call, free_port, wait_until

PASSWORD = "rabbit hole 123"
_names = count(1)


@pytest.fixture
def stack(rabbit_auth_stack):
    if not rabbit_auth_stack.relay.alive():
        raise AssertionError(f"the relay died:\n{rabbit_auth_stack.logs()}")
    return rabbit_auth_stack


class Account:
    """A user signed up over HTTP, with its device's MQTT credentials."""

    def __init__(self, stack, *, username: str | None = None) -> None:
        self.stack = stack
        self.username = username or f"rabbit{next(_names)}"
        status, body = call(f"{stack.url}/accounts/signup/", "POST", {"username": self.username, "password": PASSWORD})
        assert status == 201, body
        self.id, self.token, self.mqtt = body["id"], body["token"], body["mqtt"]

    @property
    def queue(self) -> str:
        """Its persistent session's queue (subscriptions at QoS 1)."""
        return rabbitmq_session_queues(self.mqtt["client_id"])[1]

    def bound(self) -> list[str]:
        """The routing keys its session queues (QoS 0 and QoS 1) are bound with."""
        return [key for queue in rabbitmq_session_queues(self.mqtt["client_id"])
                for key in self.stack.bindings_of(queue)]

    def phone(self, *, client_id: str | None = None, password: str | None = None) -> tuple[MqttProbe, int]:
        """A paho 3.1.1 client with a persistent session: (probe, CONNACK code)."""
        probe = MqttProbe(self.stack.node.host, self.stack.node.port, protocol=paho.MQTTv311)
        code = probe.connect(self.mqtt["username"], password or self.mqtt["password"],
                             client_id or self.mqtt["client_id"], clean_session=False)
        return probe, code

    def post(self, path: str, body: dict | None = None, method: str = "POST") -> tuple[int, dict | None]:
        return call(f"{self.stack.url}{path}", method, body, token=self.token)


def group(owner: Account, *members: Account) -> int:
    status, body = owner.post("/chats/", {"members": [m.id for m in members], "name": "g"})
    assert status == 201, body
    return body["id"]


def send(author: Account, chat: int, content: str) -> int:
    status, body = author.post(f"/chats/{chat}/messages/", {"content": content})
    assert status == 201, body
    return body["id"]


def refused(probe: MqttProbe, action) -> bool:
    """Whether `action` (a publish: a SUBSCRIBE has `MqttProbe.refuses_subscribe`) got the
    connection closed instead of an answer."""
    try:
        answered = action()
    except TimeoutError:
        answered = None
    return probe.wait_disconnected(5) and answered in (None, False)


def kicked_and_back(alice: Account, bob: Account, phone: MqttProbe, chat: int, topic: str, *,
                    qos: int = 1) -> MqttProbe:
    """Alice removes bob from the chat while his `phone` is connected; he comes back at once,
    within the auth cache's TTL, and subscribes to `topic` again as a phone would (the
    cache may still allow it). His new connection, once the removal has answered 204."""
    answer = {}
    removal = threading.Thread(target=lambda: answer.update(r=alice.post(f"/chats/{chat}/users/{bob.id}/",
                                                                        method="DELETE")))
    removal.start()
    assert phone.wait_disconnected(5), "the relay's first pass did not kick him"
    again, code = bob.phone()
    if code == 0:
        again.refuses_subscribe(topic, qos=qos)  # either way: allowed from the cache, or refused
    removal.join(30)
    assert answer["r"][0] == 204
    return again


def said(probe: MqttProbe, topic: str, content: str) -> bool:
    """Whether a message with this content reached the probe on the topic."""
    return any(json.dumps(content).encode() in payload for payload in probe.messages_on(topic))


# --- logins ---------------------------------------------------------------------------------


def test_another_devices_client_id_is_refused_and_the_victim_is_not_kicked(stack):
    # given: alice online, in a chat with bob
    alice, bob, mallory = Account(stack), Account(stack), Account(stack)
    chat = group(alice, bob)
    victim, code = alice.phone()
    assert code == 0 and victim.subscribe(f"chat/chats/{chat}") == 1

    # when: mallory presents alice's client id with his own account, then with hers
    _, with_his_account = mallory.phone(client_id=alice.mqtt["client_id"])
    attacker = MqttProbe(stack.node.host, stack.node.port)
    with_her_name = attacker.connect(alice.mqtt["username"], "0" * 64, alice.mqtt["client_id"])

    # then: both refused; alice's session is untouched and still receives
    assert with_his_account != 0 and with_her_name != 0
    send(bob, chat, "still here")
    victim.wait_for(1, topic=f"chat/chats/{chat}", timeout=10)
    assert victim.connected.is_set() and victim.connections == 1


def observer(stack) -> MqttProbe:
    """A client with the server's own account (a RabbitMQ internal user)."""
    probe = MqttProbe(stack.node.host, stack.node.port)
    assert probe.connect(stack.node.admin_username, stack.node.admin_password, f"test-observer-{next(_names)}",
                         clean_session=True) == 0
    return probe


def test_logout_disconnects_at_once_and_the_next_login_is_refused(stack):
    # given: bob online, his presence retained
    bob = Account(stack)
    phone, code = bob.phone()
    presence = f"chat/presence/{bob.id}/{bob.mqtt['client_id']}"
    assert code == 0 and phone.publish(presence, b'{"state": "online"}', retain=True)

    # when
    status, _ = bob.post("/accounts/logout/")

    # then: the relay closed its connection before the logout answered, and cleared his
    # presence (a closed connection sends no Last Will)
    assert status == 204
    assert phone.wait_disconnected(2)
    assert bob.phone()[1] != 0
    assert stack.bindings_of(bob.queue) == []
    watcher = observer(stack)
    assert watcher.subscribe(presence) == 1
    watcher.expect_nothing(1.0, topic=presence)


def test_a_deleted_account_is_disconnected_at_once_and_refused(stack):
    carol = Account(stack)
    phone, code = carol.phone()
    assert code == 0 and phone.subscribe(f"chat/users/{carol.id}") == 1

    status, _ = carol.post("/accounts/me/", {"password": PASSWORD}, method="DELETE")

    assert status == 204
    assert phone.wait_disconnected(2)
    assert carol.phone()[1] != 0
    # Its persistent session is gone with it.
    assert stack.bindings_of(carol.queue) == []


# --- subscriptions and publishes ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["user", "users+", "all", "chat-all", "other-chat", "presence", "chats+"])
def test_an_attacker_cannot_subscribe_to_what_is_not_his(stack, target):
    # given: bob and carol in a chat; mallory online
    bob, carol, mallory = Account(stack), Account(stack), Account(stack)
    theirs = group(bob, carol)
    topic = {
        "user": f"chat/users/{bob.id}",
        "users+": "chat/users/+",
        "all": "#",
        "chat-all": "chat/#",
        "other-chat": f"chat/chats/{theirs}",
        "presence": f"chat/presence/{bob.id}/{bob.mqtt['client_id']}",
        "chats+": "chat/chats/+",
    }[target]
    probe, code = mallory.phone()
    assert code == 0

    # when / then: refused, and nothing was bound for him
    assert probe.refuses_subscribe(topic) and probe.disconnected.is_set()
    assert stack.bindings_of(mallory.queue) == []
    # His own topic is fine on a new connection.
    probe, code = mallory.phone()
    assert code == 0 and probe.subscribe(f"chat/users/{mallory.id}") == 1


def test_publishing_another_devices_presence_is_refused(stack):
    # given: an observer with the server's account, watching presence
    alice, mallory = Account(stack), Account(stack)
    watcher = observer(stack)
    assert watcher.subscribe("chat/presence/+/+") == 1
    probe, code = mallory.phone()
    assert code == 0
    alice_presence = f"chat/presence/{alice.id}/{alice.mqtt['client_id']}"

    # when: mallory speaks for alice's device; then for his own
    forged = refused(probe, lambda: probe.publish(alice_presence, b'{"state": "online"}', retain=True, timeout=3))
    probe, _ = mallory.phone()
    own = probe.publish(f"chat/presence/{mallory.id}/{mallory.mqtt['client_id']}", b'{"state": "online"}')

    # then
    assert forged and own
    watcher.wait_for(1, topic=f"chat/presence/{mallory.id}/{mallory.mqtt['client_id']}")
    assert watcher.messages_on(alice_presence) == []


# --- revocation --------------------------------------------------------------------------------


def test_a_kicked_member_gets_nothing_after_the_kick_live_or_from_its_session(stack):
    # given: bob online in alice's group, subscribed (so the auth cache holds his allow)
    alice, bob = Account(stack), Account(stack)
    chat = group(alice, bob)
    topic = f"chat/chats/{chat}"
    phone, code = bob.phone()
    assert code == 0 and phone.subscribe(topic) == 1
    send(alice, chat, "before")
    phone.wait_for(1, topic=topic, timeout=10)

    # when: alice removes him; he comes back at once, within the cache's TTL, and
    # subscribes again as a phone would (the cache may still allow it)
    again = kicked_and_back(alice, bob, phone, chat, topic)
    send(alice, chat, "after")

    # then: nothing after the kick, live ...
    again.expect_nothing(1.5, topic=topic)
    assert not said(phone, topic, "after") and not said(again, topic, "after")
    # ... nor from his persistent session once the TTL is long over, and the chat's topic
    # is refused now
    later, code = bob.phone()
    assert code == 0
    later.expect_nothing(1.0, topic=topic)
    assert f"chat.chats.{chat}" not in stack.bindings_of(bob.queue)
    assert not said(later, topic, "after")
    assert later.refuses_subscribe(topic) and later.disconnected.is_set()
    # The others still get the chat.
    assert alice.phone()[0].subscribe(topic) == 1


def test_a_kicked_member_s_typing_subscription_ends_with_the_kick(stack):
    # given: bob online in alice's group, following its typing at QoS 0 (as phones do)
    alice, bob = Account(stack), Account(stack)
    chat = group(alice, bob)
    typing = f"chat/chats/{chat}/typing"
    phone, code = bob.phone()
    assert code == 0 and phone.subscribe(typing, qos=0) == 0
    assert alice.post(f"/chats/{chat}/typing/", {"typing": True})[0] == 204
    phone.wait_for(1, topic=typing, timeout=5)

    # when: alice removes him, and he comes back at once and follows the typing again
    # (within the auth cache's TTL: it may still be allowed)
    again = kicked_and_back(alice, bob, phone, chat, typing, qos=0)
    time.sleep(1.1)  # past the relay's one-per-second gate for alice in this chat
    assert alice.post(f"/chats/{chat}/typing/", {"typing": False})[0] == 204

    # then: no typing reaches him, and none of his session queues is bound to it
    again.expect_nothing(1.5, topic=typing)
    assert again.messages_on(typing) == []
    assert f"chat.chats.{chat}.typing" not in bob.bound()
    later, code = bob.phone()
    assert code == 0 and later.refuses_subscribe(typing, qos=0)


def test_an_offline_ex_member_finds_nothing_of_the_chat_in_its_session(stack):
    # given: bob subscribed with a persistent session, then offline
    alice, bob = Account(stack), Account(stack)
    chat = group(alice, bob)
    topic = f"chat/chats/{chat}"
    phone, code = bob.phone()
    assert code == 0 and phone.subscribe(topic) == 1
    phone.disconnect()

    # when: removed while offline, messages follow
    assert alice.post(f"/chats/{chat}/users/{bob.id}/", method="DELETE")[0] == 204
    send(alice, chat, "while you were away")

    # then: his session has no binding left to the chat, and he gets nothing of it
    assert f"chat.chats.{chat}" not in stack.bindings_of(bob.queue)
    back, code = bob.phone()
    assert code == 0
    back.expect_nothing(1.5, topic=topic)


def test_a_removed_chat_keeps_nobody_bound(stack):
    # given: alice alone in a group she then leaves (the group is deleted: ChatRemove)
    alice, bob = Account(stack), Account(stack)
    chat = group(alice, bob)
    phones = []
    for account in (alice, bob):
        phone, code = account.phone()
        assert code == 0 and phone.subscribe(f"chat/chats/{chat}") == 1
        phones.append(phone)

    # when
    assert bob.post(f"/chats/{chat}/users/{bob.id}/", method="DELETE")[0] == 204
    assert alice.post(f"/chats/{chat}/users/{alice.id}/", method="DELETE")[0] == 204

    # then
    assert all(phone.wait_disconnected(5) for phone in phones)
    assert f"chat.chats.{chat}" not in stack.bindings_of(alice.queue) + stack.bindings_of(bob.queue)


# --- the management API failing ------------------------------------------------------------------


def test_the_management_api_answers_are_mapped_to_done_retry_or_refused(stack):
    # given: a device with no connection and no session queue (a sign-out's DeviceRemove)
    op = DeviceRemove(user=1, username="device-999999", client_id="chat-1-999999")
    node = stack.node
    good = RabbitAccess(urls=[node.management_url], username=node.admin_username,
                        password=node.admin_password, cache_ttl=CACHE_TTL)
    dead_port = free_port()
    # A cluster whose first node does not answer: the next one is asked.
    failover = RabbitAccess(urls=[f"http://127.0.0.1:{dead_port}", node.management_url],
                            username=node.admin_username, password=node.admin_password, cache_ttl=CACHE_TTL)
    unreachable = RabbitAccess(urls=[f"http://127.0.0.1:{dead_port}"], username=node.admin_username,
                               password=node.admin_password, cache_ttl=CACHE_TTL)
    wrong_password = RabbitAccess(urls=[node.management_url], username=node.admin_username, password="nope",
                                  cache_ttl=CACHE_TTL)

    # when / then: 404s are "already so"; no answer is "later"; 401 is the row's failure
    good.apply(op, created_at=time.time(), pause=time.sleep)
    failover.apply(op, created_at=time.time(), pause=time.sleep)
    # ...and the node that answered is asked first from then on
    assert failover.urls == [node.management_url, f"http://127.0.0.1:{dead_port}"]
    with pytest.raises(AccessUnavailable):
        unreachable.apply(op, created_at=time.time(), pause=time.sleep)
    with pytest.raises(AccessRefused):
        wrong_password.apply(op, created_at=time.time(), pause=time.sleep)


def test_while_the_management_api_is_unreachable_a_removal_holds_back_what_follows_it(stack):
    # given: the relay replaced by one whose management API does not answer
    alice, bob = Account(stack), Account(stack)
    chat = group(alice, bob)
    topic = f"chat/chats/{chat}"
    phones = {}
    for account in (alice, bob):
        phone, code = account.phone()
        assert code == 0 and phone.subscribe(topic) == 1
        phones[account.id] = phone
    # Everything before the removal is out (chat.created may still be in the outbox).
    wait_until(lambda: stack.sql("SELECT count(*) FROM chat_outbox") == [(0,)], 10, "the outbox to empty")
    stack.relay.stop()
    blind = ServerProcess("relay-blind", stack.relay.args,
                          stack.relay.env | {"RABBITMQ_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}"},
                          stack.http.front_root).start()
    try:
        # when: bob is removed, and alice writes
        assert alice.post(f"/chats/{chat}/users/{bob.id}/", method="DELETE")[0] == 204
        send(alice, chat, "held back")

        # then: nothing after the removal goes out, to anybody, while it cannot be applied
        phones[alice.id].expect_nothing(2.0, topic=topic)
        assert stack.sql("SELECT count(*) FROM chat_outbox")[0][0] >= 2
        assert stack.sql("SELECT count(*) FROM chat_dead_letter") == [(0,)]
    finally:
        blind.stop()
        stack.relay.start()

    # and once the API answers: bob is cut off first, then alice gets her message
    wait_until(lambda: said(phones[alice.id], topic, "held back"), 20, "alice's message after the relay's return")
    assert phones[bob.id].wait_disconnected(5)
    assert not said(phones[bob.id], topic, "held back")
    assert f"chat.chats.{chat}" not in stack.bindings_of(bob.queue)


def test_a_devices_credentials_do_not_open_the_management_api(stack):
    # A login without a client id (the management API's, AMQP's) is refused by Django.
    alice = Account(stack)

    response = requests.get(f"{stack.node.management_url}/api/queues", timeout=5,
                            auth=(alice.mqtt["username"], alice.mqtt["password"]))

    assert response.status_code == 401
