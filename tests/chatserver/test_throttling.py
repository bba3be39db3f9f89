"""The rate limits in one process: the bucket's arithmetic, what counts as one client,
uploads (two workers and Redis: tests/chatserver/test_rate_limits.py)."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from rest_framework.test import APIClient

from chats.models import Message
from chatserver import ratelimit
from chatserver.ratelimit import Limit
from chatserver.throttling import address_key
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


def limits(settings, **rates):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates}}


def test_a_bucket_lets_its_burst_through_then_one_per_interval():
    store, limit = ratelimit.DATABASE, Limit(rate=2, period=10, burst=3)  # one every 5 s

    at_once = [store.take("k", limit, now=1000.0) for _ in range(4)]
    assert [d.allowed for d in at_once] == [True, True, True, False]
    assert at_once[3].retry_after == pytest.approx(5.0)
    assert not store.take("k", limit, now=1004.9).allowed  # refusals cost nothing...
    assert store.take("k", limit, now=1005.0).allowed  # ...and one came back after 5 s
    assert not store.take("k", limit, now=1005.0).allowed
    assert store.take("k", limit, now=1100.0).allowed  # full again, long after
    assert store.take("other", limit, now=1005.0).allowed


def test_the_buckets_are_unlogged_on_postgresql_so_their_commit_waits_for_no_wal_flush():
    # given / when: the migrations as run for the tests
    with connection.cursor() as cursor:
        cursor.execute("SELECT relpersistence FROM pg_class WHERE relname = 'chat_rate_bucket'")
        (persistence,) = cursor.fetchone()

    # then: 'u' (unlogged), not 'p' (permanent): a crash empties it, every bucket full
    assert persistence == "u"


def test_a_given_back_request_is_as_if_never_made():
    store, limit = ratelimit.DATABASE, Limit(rate=1, period=60, burst=1)

    assert store.take("k", limit, now=1000.0).allowed
    store.give_back("k", limit)

    assert store.take("k", limit, now=1000.0).allowed


def test_an_ipv6_client_counts_by_its_64_and_an_ipv4_one_by_itself():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7") == "203.0.113.7"


def test_x_forwarded_for_is_ignored_without_trusted_proxies(settings):
    # given: TRUSTED_PROXIES empty (the default), a client on TCP: a made-up header per
    # request gets no new bucket
    limits(settings, auth="2/minute")
    client = APIClient()
    body = {"username": "nobody", "password": "wrong password!"}

    statuses = [client.post("/accounts/login/", body, format="json", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}").status_code
                for n in range(3)]

    assert statuses == [401, 401, 429]


def test_uploads_have_a_limit_of_their_own_and_a_refusal_stores_nothing(settings):
    # given
    limits(settings, upload="2/hour")
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "media"}, format="json").json()["id"]

    def upload(n):
        return alice.client.post(f"/chats/{cid}/messages/", {"file": SimpleUploadedFile(f"{n}.bin", b"x" * 10)},
                                 format="multipart")

    # when
    answers = [upload(n) for n in range(3)]

    # then: a file every 30 minutes after the two; text goes on
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["error"]["code"] == "throttled"
    assert 1 <= int(answers[2]["Retry-After"]) <= 1800
    assert Message.objects.filter(chat_id=cid).count() == 2
    assert alice.client.post(f"/chats/{cid}/messages/", {"content": "text"}, format="json").status_code == 201


def test_sends_are_limited_per_user_with_a_burst(settings):
    limits(settings, send="60/minute")
    settings.THROTTLE_BURSTS = {"send": 3}
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id]}, format="json").json()["id"]

    answers = [alice.client.post(f"/chats/{cid}/messages/", {"content": f"m{n}"}, format="json") for n in range(4)]

    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert answers[3]["Retry-After"] == "1"
    # reading is never limited
    assert alice.client.get(f"/chats/{cid}/messages/").status_code == 200
