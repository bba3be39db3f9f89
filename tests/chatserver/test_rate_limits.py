"""Rate limits over real sockets: nginx and granian with two workers on PostgreSQL, the buckets in
the database and, again, in a real Redis (REDIS_URL). Requests go in concurrently, so
that both workers count; the limit is the limit: exactly N pass, then 429 `throttled`
with Retry-After, and a refused write leaves nothing behind.

The stack trusts 127.0.0.1 as a proxy in front of nginx (TRUSTED_PROXIES), so each test
names its client addresses in X-Forwarded-For, as a load balancer would; the last tests
show what a client's own header is worth without that trust.
"""

import itertools
import json
import secrets
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.stack import HttpServer, NoBroker, server_env

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "limits hold 123"
LIMITS = {
    "AUTH_THROTTLE_RATE": "5/minute",
    "LOGIN_FAILURE_THROTTLE_RATE": "3/hour",
    "SEND_THROTTLE_RATE": "6/minute",  # one every 10 s...
    "SEND_THROTTLE_BURST": "4",  # ...after 4 at once
    "UPLOAD_THROTTLE_RATE": "2/hour",
    "FRIEND_REQUEST_THROTTLE_RATE": "3/hour",
    # The test client stands for a load balancer the stack trusts.
    "TRUSTED_PROXIES": "127.0.0.1",
}
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module", params=["database", "redis"])
def limited(request, test_database_url, tmp_path_factory):
    """granian, 2 workers, with low limits; its buckets in the database or in Redis."""
    env = server_env(database_url=test_database_url, broker=NoBroker(),
                     data_dir=tmp_path_factory.mktemp(f"limits-{request.param}")) | LIMITS
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    server = HttpServer(env, tmp_path_factory.mktemp("limits-web"), workers=2).start()
    server.store = request.param
    yield server
    server.stop()


@pytest.fixture
def stack(limited, relay, request):
    if limited.store == "redis":
        request.getfixturevalue("redis_url")  # emptied, and running
    return limited


def http(url, method="GET", body=None, *, token=None, address=None):
    """(status, Retry-After or None, JSON body) of one request."""
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Token {token}")
    req.add_header("X-Forwarded-For", address or next(_addresses))
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, response.headers.get("Retry-After"), json.loads(response.read() or "null")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After"), json.loads(error.read() or "null")


def signup(stack, name=None, address=None) -> dict:
    name = name or f"u{secrets.token_hex(4)}"
    status, _, body = http(f"{stack.url}/accounts/signup/", "POST", {"username": name, "password": PASSWORD},
                           address=address)
    assert status == 201, (status, body)
    return body


def at_once(calls):
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def assert_throttled(results, retry_max):
    for status, retry_after, body in results:
        assert status == 429
        assert body["error"]["code"] == "throttled"
        assert 1 <= int(retry_after) <= retry_max


def test_sends_a_burst_of_4_across_both_workers_then_429_and_nothing_stored(stack):
    # given
    alice, bob = signup(stack), signup(stack)
    status, _, chat = http(f"{stack.url}/chats/", "POST", {"members": [bob["id"]]}, token=alice["token"])
    assert status == 201
    url = f"{stack.url}/chats/{chat['id']}/messages/"

    # when: 12 messages at once, from alice's one device, over several addresses
    results = at_once([
        lambda n=n: http(url, "POST", {"content": f"flood {n}", "client_id": f"f-{n}"}, token=alice["token"])
        for n in range(12)
    ])

    # then: exactly the burst passed; the others wait for the next one (every 10 s)
    accepted = [body for status, _, body in results if status == 201]
    assert len(accepted) == 4, [r[:2] for r in results]
    assert_throttled([r for r in results if r[0] != 201], retry_max=10)
    _, _, history = http(url, token=bob["token"])
    assert sorted(m["id"] for m in history["results"]) == sorted(m["id"] for m in accepted)
    # bob's bucket is his own
    assert http(url, "POST", {"content": "hi"}, token=bob["token"])[0] == 201


def test_signups_from_one_address_stop_at_the_limit_others_go_on(stack):
    address = next(_addresses)

    results = at_once([
        lambda n=n: http(f"{stack.url}/accounts/signup/", "POST",
                         {"username": f"s{n}-{secrets.token_hex(3)}", "password": PASSWORD}, address=address)
        for n in range(8)
    ])

    assert sorted(r[0] for r in results) == [201] * 5 + [429] * 3
    assert_throttled([r for r in results if r[0] == 429], retry_max=12)
    # and a login from there is counted in the same bucket
    status, _, _ = http(f"{stack.url}/accounts/login/", "POST", {"username": "x", "password": PASSWORD},
                        address=address)
    assert status == 429
    signup(stack)  # another address


@pytest.fixture(scope="module")
def untrusting(test_database_url, tmp_path_factory):
    """The same limits with TRUSTED_PROXIES at its default (empty): only nginx is believed."""
    env = server_env(database_url=test_database_url, broker=NoBroker(),
                     data_dir=tmp_path_factory.mktemp("limits-untrusting")) | LIMITS
    del env["TRUSTED_PROXIES"]
    server = HttpServer(env, tmp_path_factory.mktemp("limits-untrusting-web"), workers=2).start()
    yield server
    server.stop()


def test_a_made_up_forwarded_address_does_not_reset_the_limit(untrusting, relay):
    # when: logins from one machine, each claiming another address in X-Forwarded-For
    results = [http(f"{untrusting.url}/accounts/login/", "POST", {"username": f"x{n}", "password": PASSWORD},
                    address=f"203.0.113.{n}") for n in range(8)]

    # then: they all count as that machine's (the address nginx saw): 5, then refused
    assert [r[0] for r in results] == [401] * 5 + [429] * 3
    assert_throttled(results[5:], retry_max=12)


def test_failed_logins_per_username_whatever_the_address_and_right_ones_do_not_count(stack):
    # given
    carol, dave = signup(stack), signup(stack)
    login = f"{stack.url}/accounts/login/"
    for _ in range(4):  # above the limit of 3, but right: not counted
        assert http(login, "POST", {"username": dave["username"], "password": PASSWORD})[0] == 200

    # when: wrong passwords for carol, all at once, each from an address of its own
    results = at_once([
        lambda: http(login, "POST", {"username": carol["username"].upper(), "password": "wrong one!"})
        for _ in range(5)
    ])

    # then: 3 were checked (401), the rest refused unchecked; now even the right password waits
    assert sorted(r[0] for r in results) == [401] * 3 + [429] * 2
    right = http(login, "POST", {"username": carol["username"], "password": PASSWORD})
    assert_throttled([right], retry_max=1200)
    assert http(login, "POST", {"username": dave["username"], "password": PASSWORD})[0] == 200


def test_friend_requests_per_user(stack):
    alice = signup(stack)
    others = [signup(stack) for _ in range(4)]

    results = at_once([
        lambda o=o: http(f"{stack.url}/accounts/{alice['id']}/friends/{o['id']}/", "POST", token=alice["token"])
        for o in others
    ])

    assert sorted(r[0] for r in results) == [201] * 3 + [429]
    assert_throttled([r for r in results if r[0] == 429], retry_max=1200)
    _, _, requests = http(f"{stack.url}/accounts/{alice['id']}/friends/requests/", token=alice["token"])
    assert len(requests["outgoing"]) == 3


@pytest.mark.parametrize("limited", ["redis"], indirect=True)
def test_without_redis_requests_pass_unchecked_and_it_is_logged(stack, redis_server):
    # (last of the module: the web workers then leave Redis alone for 5 s)
    alice, bob = signup(stack), signup(stack)
    status, _, chat = http(f"{stack.url}/chats/", "POST", {"members": [bob["id"]]}, token=alice["token"])
    url = f"{stack.url}/chats/{chat['id']}/messages/"

    # when: Redis goes away
    redis_server.stop()
    try:
        statuses = [http(url, "POST", {"content": f"m{n}"}, token=alice["token"])[0] for n in range(6)]
    finally:
        redis_server.start()

    # then: no 500, no limit (fail open), and the operator is told
    assert statuses == [201] * 6
    assert "rate limits unchecked" in stack.log_path.read_text()
