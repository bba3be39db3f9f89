"""Concurrent requests on a real PostgreSQL: one direct chat per pair, seqs without gaps
or duplicates, one message per client_id, and sends that waited for another change to
the chat. Threads with their own connections, so these tests commit (transactional_db)."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from chats.services import members as member_services
from chats.models import Chat, Membership, Message
from chatserver import outbox
from chatserver.events import EventType
from tests.support.factories import authed_client, make_user
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

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


def test_racing_senders_get_consecutive_seqs_published_in_seq_order(relay, broker):
    # given: an observer on the chat's topic (the server's own account, to keep it simple)
    users = [make_user() for _ in range(4)]
    owner = users[0]
    cid = owner.client.post(
        "/chats/", {"members": [u.id for u in users[1:]], "name": "race"}, format="json"
    ).json()["id"]
    observer = MqttProbe(broker.host, broker.port)
    assert observer.connect(broker.admin_username, broker.admin_password, "race-observer", clean_session=True) == 0
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


def _send_waits_for_the_chat_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ["%UPDATE chats_chat SET last_seq%"],
        )
        return cursor.fetchone()[0] > 0


def send_behind(change, user, cid):
    """Send as `user` while `change` (run in a transaction that holds the chat's lock)
    has not committed yet: the send's statement starts, waits for the lock, and goes on
    once the change is committed. Returns the send's response."""
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                change()
                held.set()
                release.wait(10)
        finally:
            connection.close()

    def send():
        try:
            return authed_client(user.token).post(f"/chats/{cid}/messages/", {"content": "hi"}, format="json")
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(hold)
        assert held.wait(10)
        sending = pool.submit(send)
        wait_until(_send_waits_for_the_chat_lock, 10, "the send to wait for the chat's lock")
        release.set()
        holding.result()
        return sending.result()


@pytest.fixture
def message_events(monkeypatch):
    """The message.created events queued during the test, as (payload, user ids): read
    at enqueue time, since a relay left running by an earlier test may already have
    published and deleted the rows."""
    queued = []
    enqueue = outbox.enqueue

    def recording(**kwargs):
        event = kwargs.get("event")
        if event is not None and event.type == EventType.MESSAGE_CREATED:
            queued.append((json.loads(event.encode()), list(kwargs["user_ids"])))
        return enqueue(**kwargs)

    monkeypatch.setattr(outbox, "enqueue", recording)
    return queued


def test_a_send_that_waited_for_a_kick_of_its_author_is_refused_and_writes_nothing(message_events):
    # given
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "g"}, format="json").json()["id"]

    # when: the send's statement read the chat before the kick committed
    response = send_behind(lambda: member_services.member_remove(chat_id=cid, actor=alice, user_id=bob.id), bob, cid)

    # then
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "chat_not_found"
    assert Message.objects.count() == 0
    assert Chat.objects.get(id=cid).last_seq == 0
    assert message_events == []


def test_a_member_added_while_a_send_waited_for_the_lock_is_among_its_recipients(message_events):
    # given
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "g"}, format="json").json()["id"]

    # when: the send's statement read the members before carol's addition committed
    response = send_behind(lambda: member_services.member_add(chat_id=cid, actor=alice, user_id=carol.id), bob, cid)

    # then
    assert response.status_code == 201
    assert response.json()["unread_count"] == 2
    [(payload, user_ids)] = message_events
    assert sorted(user_ids) == sorted([alice.id, bob.id, carol.id])
    assert payload["data"] == response.json()
