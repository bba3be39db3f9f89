"""Concurrent requests on a real PostgreSQL: one direct chat per pair, seqs without gaps
or duplicates, one message per client_id. Threads with their own connections, so these
tests commit (transactional_db)."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from chats.models import Chat, Membership, Message
from tests.support.factories import authed_client, make_user
from tests.support.mqtt import MqttProbe

pytestmark = pytest.mark.django_db(transaction=True)


def race(calls):
    """Run the calls at once (released together by a barrier); return their results."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        try:
            barrier.wait()
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_racing_direct_chat_creates_make_one_chat():
    # given
    alice, bob = make_user(), make_user()
    clients = [authed_client(u.token) for u in (alice, bob) * 4]
    others = [bob.id, alice.id] * 4

    # when
    responses = race(
        [
            (lambda c=c, o=o: c.post("/chats/", {"members": [o]}, format="json"))
            for c, o in zip(clients, others, strict=True)
        ]
    )

    # then
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Chat.objects.count() == 1
    assert Membership.objects.count() == 2


def test_racing_senders_get_consecutive_seqs_published_in_seq_order(relay, mosquitto):
    # given: an observer on the chat's topic (the server's own account, to keep it simple)
    users = [make_user() for _ in range(4)]
    owner = users[0]
    cid = owner.client.post(
        "/chats/", {"members": [u.id for u in users[1:]], "name": "race"}, format="json"
    ).json()["id"]
    observer = MqttProbe(mosquitto.host, mosquitto.port)
    assert observer.connect(mosquitto.admin_username, mosquitto.admin_password, "race-observer", clean_session=True) == 0
    assert observer.subscribe(f"chat/chats/{cid}") == 1
    per_sender = 15

    def sender(user):
        client = authed_client(user.token)
        return [
            client.post(f"/chats/{cid}/messages/", {"content": f"{user.id}-{i}"}, format="json").status_code
            for i in range(per_sender)
        ]

    # when
    statuses = race([lambda u=u: sender(u) for u in users])

    # then
    assert all(s == [201] * per_sender for s in statuses)
    total = per_sender * len(users)
    seqs = list(Message.objects.filter(chat_id=cid).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, total + 1))
    assert Chat.objects.get(id=cid).last_seq == total
    # the relay publishes them in seq order
    try:
        received = observer.wait_for(total, timeout=20)
    finally:
        observer.close()
    published = [json.loads(r.payload)["data"]["seq"] for r in received]
    assert published == list(range(1, total + 1))


def test_racing_retries_with_one_client_id_store_one_message():
    # given
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "x"}, format="json").json()["id"]
    clients = [authed_client(alice.token) for _ in range(6)]

    # when
    responses = race(
        [
            (lambda c=c: c.post(f"/chats/{cid}/messages/", {"content": "once", "client_id": "k"}, format="json"))
            for c in clients
        ]
    )

    # then
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Message.objects.filter(chat_id=cid).count() == 1
    assert Chat.objects.get(id=cid).last_seq == 1
