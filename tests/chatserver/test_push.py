"""Pushes: the real FCM client (google-auth + requests) against a real HTTP server standing
in for FCM and its OAuth2 token endpoint (the simulator's `fcm-sink`), and the push worker
fed by the jobs real services queue.
"""

import base64
import json
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.db import transaction
from django.utils import timezone

from accounts.models import Device, User
from chat_sim.fcm_sink import Answer, FcmSink, fcm_error
from chats.models import MUTED_FOREVER, Membership
from chats.services.chats import chat_create
from chats.services.message_send import message_send
from chats.services.pointers import pointer_move
from chatserver import push
from chatserver.fcm import SCOPE, FcmClient, FcmMessage, Outcome
from chatserver.models import PushJob
from chatserver.push_worker import PushWorker
from tests.support.factories import login, make_actor, make_user
from tests.support.stack import wait_until, worker_in_thread

PROJECT = "chat-test"


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sink():
    with FcmSink() as server:
        yield server


@pytest.fixture
def service_account(sink, key, tmp_path):
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(sink.service_account(private_key_pem=pem)))
    return path


@pytest.fixture
def client(sink, service_account):
    return FcmClient(project_id=PROJECT, service_account_file=str(service_account), endpoint=sink.url, timeout=1.0)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- the client ---------------------------------------------------------------------------


def test_a_send_gets_an_access_token_with_a_signed_grant_and_posts_the_v1_message(client, sink, key):
    # given
    message = FcmMessage(token="tok-1", data={"type": "message", "chat_id": "7"}, priority="high",
                         collapse_key="chat-7", ttl_seconds=60)

    # when
    result = client.send(message)

    # then
    assert result.outcome == Outcome.SENT
    (grant,) = sink.token_requests
    header, claims, signature = grant["form"]["assertion"].split(".")
    key.public_key().verify(_b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert grant["claims"]["scope"] == SCOPE
    # google-auth posts the grant to the file's token_uri (here: the sink) but always signs
    # it for Google's audience: a site's own token endpoint must accept that.
    assert grant["claims"]["aud"] == "https://oauth2.googleapis.com/token"
    assert grant["claims"]["iss"] == "chat@example.iam"
    (push_,) = sink.pushes
    assert push_.project == PROJECT
    assert push_.headers["Authorization"] in {f"Bearer {t}" for t in sink.issued}
    assert push_.message == {
        "token": "tok-1",
        "data": {"type": "message", "chat_id": "7"},
        "android": {"priority": "high", "ttl": "60s", "collapse_key": "chat-7"},
    }


def test_the_access_token_is_reused_until_it_expires(client, sink):
    for n in range(3):
        assert client.send(FcmMessage(token=f"t{n}", data={})).outcome == Outcome.SENT
    assert len(sink.token_requests) == 1
    assert len(sink.pushes) == 3


@pytest.mark.parametrize(("answer", "outcome", "retry_after"), [
    (Answer(404, fcm_error(404, "NOT_FOUND", "UNREGISTERED")), Outcome.DROP_TOKEN, None),
    (Answer(400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")), Outcome.DROP_TOKEN, None),
    (Answer(429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), {"Retry-After": "7"}), Outcome.RETRY, 7.0),
    (Answer(500, fcm_error(500, "INTERNAL", "INTERNAL")), Outcome.RETRY, None),
    (Answer(503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), {"Retry-After": "2"}), Outcome.RETRY, 2.0),
    (Answer(403, fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")), Outcome.DROP_TOKEN, None),
    (Answer(403, fcm_error(403, "PERMISSION_DENIED")), Outcome.FAILED, None),
])
def test_fcm_answers_are_classified(client, sink, answer, outcome, retry_after):
    sink.respond = lambda push_: answer

    result = client.send(FcmMessage(token="tok", data={}))

    assert (result.outcome, result.retry_after, result.status) == (outcome, retry_after, answer.status)
    assert sink.pushes == []


def test_a_hang_past_the_timeout_is_retried_later(client, sink):
    sink.respond = lambda push_: Answer(200, {"name": "late"}, delay=2.5)

    started = time.monotonic()
    result = client.send(FcmMessage(token="tok", data={}))

    assert result.outcome == Outcome.RETRY
    assert "Timeout" in result.error
    assert time.monotonic() - started < 2.0


def test_a_refused_access_token_is_replaced(client, sink):
    # given: FCM stops accepting the token it was given
    assert client.send(FcmMessage(token="a", data={})).outcome == Outcome.SENT
    sink.issued.clear()

    # when
    refused = client.send(FcmMessage(token="b", data={}))
    again = client.send(FcmMessage(token="b", data={}))

    # then
    assert (refused.outcome, refused.status) == (Outcome.RETRY, 401)
    assert again.outcome == Outcome.SENT
    assert len(sink.token_requests) == 2


# --- the worker, fed by the services -----------------------------------------------------


@pytest.fixture
def push_on(settings, service_account, sink):
    settings.FCM_PROJECT_ID = PROJECT
    settings.FCM_SERVICE_ACCOUNT_FILE = str(service_account)
    settings.FCM_ENDPOINT = sink.url
    settings.FCM_TIMEOUT = 1.0
    settings.PUSH_MAX_ATTEMPTS = 3
    return sink


@pytest.fixture
def push_worker(push_on, transactional_db):
    """The push worker, running in a thread of this process (its own DB connection)."""
    with worker_in_thread(PushWorker) as worker:
        yield worker


def with_token(user, token: str) -> Device:
    device = Device.objects.filter(user_id=user.id).order_by("id").first()
    Device.objects.filter(id=device.id).update(push_token=token)
    return device


def test_with_push_off_nothing_is_queued(settings, db):
    settings.FCM_PROJECT_ID = ""
    alice, bob = make_actor(), make_actor()
    chat, _ = chat_create(actor=alice, member_ids=[bob.id])

    message_send(actor=alice, chat_id=chat.id, content="hi")

    assert PushJob.objects.count() == 0
    assert push.status() == {"push": "off", "push_pending": 0, "push_failed": 0}


def test_a_message_wakes_the_other_members_sleeping_devices_with_its_data(push_worker, sink):
    # given: bob's phone has a token and no connection; alice's own device too
    alice, bob, carol = make_actor("alice"), make_actor("bob"), make_actor("carol")
    with_token(alice, "alice-phone")
    with_token(bob, "bob-phone")
    with_token(carol, "carol-phone")
    chat, _ = chat_create(actor=alice, member_ids=[bob.id, carol.id], name="Trip")
    Membership.objects.filter(chat=chat, user_id=carol.id).update(last_read_seq=0)
    sink.wait_for(2, timeout=5)  # the invitations
    invitations = list(sink.pushes)
    sink.pushes.clear()

    # when
    started = time.monotonic()
    message, _ = message_send(actor=alice, chat_id=chat.id, content="x" * 150)

    # then
    pushes = sink.wait_for(2, timeout=5)
    took = time.monotonic() - started
    assert {p.token for p in invitations} == {"bob-phone", "carol-phone"}
    assert all(p.data["type"] == "invitation" and p.data["chat_name"] == "Trip" for p in invitations)
    assert sorted(p.token for p in pushes) == ["bob-phone", "carol-phone"]  # never the author's
    for p in pushes:
        assert p.data == {
            "type": "message", "chat_id": str(chat.id), "message_id": str(message.id), "seq": "1",
            "sender_id": str(alice.id), "sender_name": "alice", "chat_name": "Trip",
            "preview": "x" * 100, "unread_count": "1",
        }
        assert p.android == {"priority": "high", "ttl": "2419200s", "collapse_key": f"chat-{chat.id}"}
        assert len(json.dumps(p.message).encode()) < 4096
    assert took < 1.0
    wait_until(lambda: PushJob.objects.count() == 0, 10, "the push queue to empty")


def test_no_push_to_connected_devices_muted_chats_or_without_previews(push_worker, sink):
    # given
    alice, bob, carol, dave = make_actor(), make_actor(), make_actor(), make_actor()
    for user in (bob, carol, dave):
        with_token(user, f"{user.username}-phone")
    chat, _ = chat_create(actor=alice, member_ids=[bob.id, carol.id, dave.id], name="g")
    sink.wait_for(3, timeout=5)
    sink.pushes.clear()
    # bob is connected; carol muted the chat; dave does not want previews
    soon = timezone.now() + timedelta(minutes=1)
    Device.objects.filter(user_id=bob.id).update(presence="online", presence_expires_at=soon)
    Membership.objects.filter(chat=chat, user_id=carol.id).update(muted_until=soon)
    User.objects.filter(id=dave.id).update(push_previews=False)

    # when
    message_send(actor=alice, chat_id=chat.id, content="secret")
    message_send(actor=alice, chat_id=chat.id, content="second")

    # then
    pushes = sink.wait_for(2, timeout=5)
    time.sleep(0.3)  # and no more come
    assert [p.token for p in sink.pushes] == [f"{dave.username}-phone"] * 2
    assert all("preview" not in p.data for p in pushes)
    # the count when the push leaves: the second message may already be in the first
    assert pushes[0].data["unread_count"] in {"1", "2"}
    assert pushes[1].data["unread_count"] == "2"


def test_reading_on_one_device_clears_the_others(push_worker, sink):
    # given: bob has a phone and a tablet, both with tokens
    alice, bob_phone = make_actor(), make_user()
    bob, tablet = User.objects.get(id=bob_phone.id), login(bob_phone)
    phone = with_token(bob, "bob-phone")
    Device.objects.filter(id=tablet.device.id).update(push_token="bob-tablet")
    chat, _ = chat_create(actor=alice, member_ids=[bob.id])
    message, _ = message_send(actor=alice, chat_id=chat.id, content="hi")
    sink.wait_for(2, timeout=5)
    sink.pushes.clear()

    # when: bob reads on the phone
    pointer_move(actor=bob, chat_id=chat.id, message_id=message.id, read=True, device_id=phone.id)

    # then: only the tablet is told
    (read,) = sink.wait_for(1, timeout=5)
    time.sleep(0.2)
    assert len(sink.pushes) == 1
    assert read.token == "bob-tablet"
    assert read.data == {"type": "read", "chat_id": str(chat.id), "last_read_message_id": str(message.id),
                         "unread_count": "0"}
    assert read.android["priority"] == "normal"


def test_a_dead_token_is_dropped_and_a_failing_device_holds_up_nobody(push_worker, sink, settings):
    # given: bob's token is unregistered; carol's FCM answers slowly (past the timeout)
    alice, bob, carol, dave = make_actor(), make_actor(), make_actor(), make_actor()
    for user in (bob, carol, dave):
        with_token(user, f"{user.username}-phone")

    def respond(p):
        if p.token == f"{bob.username}-phone":
            return Answer(404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"))
        if p.token == f"{carol.username}-phone":
            return Answer(200, {"name": "x"}, delay=3.0)
        return None

    sink.respond = respond
    with transaction.atomic():
        chat, _ = chat_create(actor=alice, member_ids=[bob.id, carol.id, dave.id], name="g")

    # then: dave's invitation arrives without waiting for carol's hang
    started = time.monotonic()
    wait_until(lambda: any(p.token == f"{dave.username}-phone" for p in sink.pushes), 5, "dave's push")
    assert time.monotonic() - started < 1.0
    wait_until(lambda: Device.objects.get(user_id=bob.id).push_token is None, 5, "bob's dead token dropped")
    # carol's push is retried (the hang counts as a failure) until it is given up
    wait_until(lambda: PushJob.objects.filter(failed=True).count() == 1, 15, "carol's push given up")
    failed = PushJob.objects.get(failed=True)
    assert failed.attempts == settings.PUSH_MAX_ATTEMPTS
    assert failed.data["token"] == f"{carol.username}-phone"
    assert push.status() == {"push": "on", "push_pending": 0, "push_failed": 1}


def test_a_429_is_retried_after_its_retry_after(push_worker, sink):
    # given
    alice, bob = make_actor(), make_actor()
    with_token(bob, "bob-phone")
    answers = iter([Answer(429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), {"Retry-After": "1"})])
    sink.respond = lambda p: next(answers, None)
    started = time.monotonic()

    # when
    chat_create(actor=alice, member_ids=[bob.id], name="g")

    # then
    (delivered,) = sink.wait_for(1, timeout=8)
    assert delivered.token == "bob-phone"
    assert delivered.received_at - started >= 1.0
    assert len(sink.attempts) == 2
    wait_until(lambda: PushJob.objects.count() == 0, 10, "the push queue to empty")


def test_a_mention_is_pushed_even_in_a_muted_chat(push_worker, sink):
    # given: bob and carol muted the group; both phones sleep
    alice, bob, carol = make_actor(), make_actor(), make_actor()
    for user in (bob, carol):
        with_token(user, f"{user.username}-phone")
    chat, _ = chat_create(actor=alice, member_ids=[bob.id, carol.id], name="g")
    sink.wait_for(2, timeout=5)
    sink.pushes.clear()
    Membership.objects.filter(chat=chat, user_id__in=[bob.id, carol.id]).update(muted_until=MUTED_FOREVER)

    # when
    message, _ = message_send(actor=alice, chat_id=chat.id, content=f"@{bob.username} look")

    # then: bob, mentioned, is woken, and told why; carol is not
    [push_] = sink.wait_for(1, timeout=5)
    time.sleep(0.3)  # and no more come
    assert [p.token for p in sink.pushes] == [f"{bob.username}-phone"]
    assert push_.data["mentioned"] == "true"
    assert push_.data["message_id"] == str(message.id)


def test_a_reaction_wakes_the_message_s_author_unless_it_muted_the_chat(push_worker, sink):
    # given: alice's phone sleeps with a token
    from chats.services.reactions import reaction_add

    alice, bob = make_actor("alice2"), make_actor("bob2")
    with_token(alice, "alice-phone")
    chat, _ = chat_create(actor=alice, member_ids=[bob.id], name="g")
    message, _ = message_send(actor=alice, chat_id=chat.id, content="hi")

    # when
    reaction_add(actor=bob, chat_id=chat.id, message_id=message.id, emoji="👍")

    # then
    [push_] = sink.wait_for(1, timeout=5)
    assert push_.token == "alice-phone"
    assert push_.data == {"type": "reaction", "chat_id": str(chat.id), "message_id": str(message.id),
                          "emoji": "👍", "by_id": str(bob.id), "by_name": "bob2"}
    assert push_.android["priority"] == "normal"
    # muted: no more
    Membership.objects.filter(chat=chat, user_id=alice.id).update(muted_until=MUTED_FOREVER)
    reaction_add(actor=bob, chat_id=chat.id, message_id=message.id, emoji="🔥")
    time.sleep(0.5)
    assert len(sink.pushes) == 1


def test_a_message_push_is_built_in_two_queries_whatever_the_group_size_deleted_messages_not_counted(
    db, django_assert_num_queries
):
    from chats.push import build_message
    from chats.services.message_edit import message_update

    # given: a group of eight sleeping phones; three messages, the second deleted
    alice = make_actor()
    members = [make_actor() for _ in range(8)]
    for user in members:
        with_token(user, f"{user.username}-phone")
    chat, _ = chat_create(actor=alice, member_ids=[m.id for m in members], name="big")
    sent = [message_send(actor=alice, chat_id=chat.id, content=f"m{i}")[0] for i in range(3)]
    message_update(actor=alice, chat_id=chat.id, message_id=sent[1].id, delete=True)
    Membership.objects.filter(chat=chat, user_id=members[0].id).update(last_read_seq=2)

    # when
    with django_assert_num_queries(2):
        deliveries = build_message({"message_id": sent[2].id})

    # then: every member but the author, unread = newest seq - pointer - deleted after it
    unread = {d.message.token: d.message.data["unread_count"] for d in deliveries}
    assert unread == {f"{m.username}-phone": "1" if m is members[0] else "2" for m in members}
    assert [d.device_id for d in deliveries] == sorted(d.device_id for d in deliveries)
