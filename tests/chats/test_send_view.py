"""The message POST's fast path (chats/send_view.py): a plain text message is answered
without DRF's dispatch, with the DRF view's bytes and headers; every other request and
every refusal gets the DRF view's very answer, counted once against the sender's limit."""

from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from accounts.models import Block
from chats import send_view
from chats.models import Message
from chats.views import ChatMessagesView
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


def post(user, path, body, **extra):
    return user.client.post(path, body, format="json", **extra)


def answer(response) -> tuple:
    """What a client sees of an answer."""
    return response.status_code, response.content, dict(response.headers)


def without_length(headers) -> dict:
    return {name: value for name, value in headers.items() if name != "Content-Length"}


def fast_path_off(patch) -> None:
    """Every message POST is the DRF view's."""
    patch.setattr(send_view, "fast_send", lambda *args, **kwargs: None)


def drf_dispatch_off(patch) -> None:
    """DRF's dispatch fails: only the fast path can answer."""
    def dispatch(*args, **kwargs):
        raise AssertionError("DRF's dispatch was used")

    patch.setattr(APIView, "dispatch", dispatch)


@pytest.fixture
def chat():
    """alice and bob's direct chat; alice's token in the cache (she sent once)."""
    alice, bob = make_user(), make_user()
    cid = post(alice, "/chats/", {"members": [bob.id]}).json()["id"]
    assert post(alice, f"/chats/{cid}/messages/", {"content": "warm-up"}).status_code == 201
    return alice, bob, cid


def test_a_plain_message_is_answered_without_drf_with_the_drf_views_bytes_and_headers(chat, monkeypatch):
    alice, _, cid = chat
    path = f"/chats/{cid}/messages/"
    body = {"content": 'héllo "you" 100% \\ 🎉', "client_id": "k1"}

    # given: the DRF view's answers to a message and to its retry
    with monkeypatch.context() as patch:
        fast_path_off(patch)
        by_drf = post(alice, path, body)
        retry_by_drf = post(alice, path, body)

    # when: the retry again and a new message, DRF's dispatch out of reach
    with monkeypatch.context() as patch:
        drf_dispatch_off(patch)
        retry = post(alice, path, body)
        sent = post(alice, path, {"content": "second", "client_id": "k2"})

    # then: the same bytes and headers (the retry is the first message), the same shape
    assert (by_drf.status_code, sent.status_code) == (201, 201)
    assert answer(retry) == answer(retry_by_drf)
    assert retry_by_drf.status_code == 200 and retry.json() == by_drf.json()
    assert without_length(sent.headers) == without_length(by_drf.headers)
    assert sent.json().keys() == by_drf.json().keys()
    assert sent.json()["seq"] == by_drf.json()["seq"] + 1
    assert Message.objects.filter(chat_id=cid).count() == 3


@pytest.mark.parametrize("case", [
    "not a member", "blocked", "malformed JSON", "wrong type", "blank", "too long",
    "not JSON", "Accept: text/html", "no token", "unknown token",
])
def test_what_the_fast_path_does_not_accept_gets_the_drf_views_very_answer(chat, monkeypatch, case):
    # given
    alice, bob, cid = chat
    carol = make_user()
    path, body, extra, user = f"/chats/{cid}/messages/", {"content": "hi"}, {}, alice
    if case == "not a member":
        path = f"/chats/{post(bob, '/chats/', {'members': [carol.id]}).json()['id']}/messages/"
    elif case == "blocked":
        Block.objects.create(user_id=bob.id, blocked_id=alice.id)
    elif case == "malformed JSON":
        body, extra = '{"content": "hi"', {"content_type": "application/json"}
    elif case == "wrong type":
        body = {"content": 5}
    elif case == "blank":
        body = {"content": "   "}
    elif case == "too long":
        body = {"content": "x" * 100_000}
    elif case == "not JSON":
        body, extra = "content=hi", {"content_type": "text/plain"}
    elif case == "Accept: text/html":
        extra = {"HTTP_ACCEPT": "text/html"}
    elif case == "no token":
        user = SimpleNamespace(client=APIClient())
    elif case == "unknown token":
        user = SimpleNamespace(client=APIClient(HTTP_AUTHORIZATION="Token not-a-token"))

    def attempt():
        if isinstance(body, str):
            return user.client.post(path, body, **extra)
        return post(user, path, body, **extra)

    # when
    fast = attempt()
    with monkeypatch.context() as patch:
        fast_path_off(patch)
        by_drf = attempt()

    # then: the same answer, a refusal, and nothing written
    assert answer(fast) == answer(by_drf)
    assert 400 <= fast.status_code < 500, fast.content
    assert Message.objects.filter(chat_id=cid).count() == 1


def test_a_refused_send_counts_once_against_the_senders_limit(chat, settings):
    # given: a burst of 3 sends
    alice, bob, cid = chat
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "send": "1/hour"}}
    settings.THROTTLE_BURSTS = {"send": 3}
    Block.objects.create(user_id=bob.id, blocked_id=alice.id)

    # when: two refused sends, then the block lifted, two more
    refused = [post(alice, f"/chats/{cid}/messages/", {"content": f"r{n}"}) for n in range(2)]
    Block.objects.all().delete()
    after = [post(alice, f"/chats/{cid}/messages/", {"content": f"a{n}"}) for n in range(2)]

    # then: the refusals took one each, the third send passed, the fourth was one too many
    assert [r.status_code for r in refused] == [403, 403]
    assert [a.status_code for a in after] == [201, 429]
    assert after[1]["Retry-After"]


def test_a_view_whose_policies_the_fast_path_does_not_carry_out_is_refused():
    # A throttle added to the DRF view and not to the fast path would be skipped by it.
    class Stricter(ChatMessagesView):
        throttle_classes = [*ChatMessagesView.throttle_classes, UserRateThrottle]

    with pytest.raises(ImproperlyConfigured, match="throttle_classes"):
        Stricter.as_view()
    assert ChatMessagesView.as_view().cls is ChatMessagesView  # the schema's view
