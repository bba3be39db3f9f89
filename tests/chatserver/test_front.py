"""The front server (nginx, front/nginx.conf) as it ships, over real sockets: slow and idle
clients do not stop the service, bodies arrive whole (chunked ones included), and what
never reaches Django is still answered in the error envelope."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest

from chatserver.tls import local_server_tls

from tests.support.factories import make_user
from tests.support.stack import HttpServer, NoBroker, call, child_pids, free_port, running, server_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "front door 123"


def raw(port: int, data: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as it is on a new connection; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def signup(url: str) -> dict:
    status, body = call(f"{url}/accounts/signup/", "POST",
                        {"username": f"f{secrets.token_hex(4)}", "password": PASSWORD})
    assert status == 201, body
    return body


class HeldConnections:
    """`idle` connections that send nothing and `slow` ones that send a request head a
    byte at a time, every `interval`, for as long as they are held."""

    def __init__(self, port: int, *, idle: int, slow: int, interval: float = 0.5) -> None:
        self.idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
        self.slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(slow)]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._trickle, args=(interval,), daemon=True)
        self.thread.start()

    def _trickle(self, interval: float) -> None:
        head = b"POST /accounts/login/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        for byte in head:
            for sock in self.slow:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass
            if self.stopped.wait(interval):
                return

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        for sock in self.idle + self.slow:
            sock.close()


def test_idle_and_slowloris_clients_do_not_keep_others_waiting(live_stack):
    # given: a member of a chat, then 200 idle connections and 20 trickling a header
    alice, bob = signup(live_stack.url), signup(live_stack.url)
    _, chat = call(f"{live_stack.url}/chats/", "POST", {"members": [bob["id"]]}, alice["token"])
    held = HeldConnections(live_stack.http.port, idle=200, slow=20)
    try:
        time.sleep(1)  # every slow client is well into its head

        # when
        started = time.monotonic()
        health = call(f"{live_stack.url}/health/", timeout=1)
        health_took = time.monotonic() - started
        started = time.monotonic()
        sent = call(f"{live_stack.url}/chats/{chat['id']}/messages/", "POST", {"content": "still here"},
                    alice["token"], timeout=1)
        send_took = time.monotonic() - started
    finally:
        held.close()

    # then: both answered, each within the second it was given
    assert health[0] == 200 and health[1]["status"] == "ok"
    assert sent[0] == 201 and sent[1]["content"] == "still here"
    assert health_took < 1 and send_took < 1


def test_a_chunked_body_is_read_whole(live_stack):
    # given: a message body sent in two chunks, without a Content-Length
    alice, bob = signup(live_stack.url), signup(live_stack.url)
    _, chat = call(f"{live_stack.url}/chats/", "POST", {"members": [bob["id"]]}, alice["token"])
    chunks = [b'{"content": "sent in', b' two chunks"}']
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"

    # when
    status, _, answer = raw(live_stack.http.port, (
        f"POST /chats/{chat['id']}/messages/ HTTP/1.1\r\nHost: chat.test\r\n"
        f"Authorization: Bearer {alice['token']}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + body)

    # then
    assert (status, json.loads(answer)["content"]) == (201, "sent in two chunks")
    _, page = call(f"{live_stack.url}/chats/{chat['id']}/messages/", token=bob["token"])
    assert [m["content"] for m in page["results"]] == ["sent in two chunks"]


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /health/ HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /health/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
    (b"GET /health/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 7000) for n in range(6))
     + b"\r\n", 431, "header_too_large"),
    (b"POST /accounts/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Content-Length: 999999999\r\n\r\n", 413, "payload_too_large"),
    (b"GET /_front/400 HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
], ids=["garbage", "broken-header", "long-uri", "large-header", "large-headers", "large-body", "front-internals"])
def test_requests_that_never_reach_django_are_answered_in_the_envelope(live_stack, request_bytes, status, code):
    answer = raw(live_stack.http.port, request_bytes)

    assert (answer[0], answer[1]["content-type"], error_code(answer[2])) == (status, "application/json", code)


def test_while_the_web_tier_is_down_the_front_says_503_with_retry_after(test_database_url, tmp_path):
    # given: a front and granian of their own, then granian's main process killed
    server = HttpServer(server_env(database_url=test_database_url, broker=NoBroker(), data_dir=tmp_path),
                        tmp_path).start()
    try:
        workers = child_pids(server.proc.pid)
        assert len(workers) == 2
        server.kill()
        # (the kernel kills its workers: chatserver/webserver.py)
        wait_until(lambda: not any(running(pid) for pid in workers), 10,
                   "the killed main process's workers to stop")
        health = b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n"

        # when
        status, headers, body = raw(server.port, health)

        # then: the envelope and when to try again; and Django answers again once it is back
        assert (status, headers["retry-after"], error_code(body)) == (503, "1", "unavailable")
        server.start()
        wait_until(lambda: raw(server.port, health)[0] == 200, 10,
                   "Django answering through the front again")
    finally:
        server.stop()


def test_with_a_certificate_the_port_speaks_https_and_plain_http_is_told_so(test_database_url, tmp_path):
    # given: a front with the local CA's certificate (HTTPS_CERT / HTTPS_KEY)
    tls = local_server_tls(tmp_path / "tls")
    server = HttpServer(server_env(database_url=test_database_url, broker=NoBroker(), data_dir=tmp_path),
                        tmp_path, tls=tls).start()
    try:
        # when
        with urllib.request.urlopen(f"{server.url}/health/", timeout=5, context=server.ssl_context) as response:
            over_https = response.status, response.version, json.loads(response.read())["database"]
        status, headers, body = raw(server.port, b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        server.stop()

    # then
    assert server.url.startswith("https://127.0.0.1:")
    assert over_https == (200, 11, "up")
    assert (status, error_code(body)) == (400, "bad_request")
    assert json.loads(body)["error"]["message"] == "This port speaks HTTPS."


def test_the_broker_auth_checks_answer_on_the_loopback_listener_only(test_database_url, mosquitto, tmp_path):
    # given: a front with the broker-auth listener (BROKER=rabbitmq), and a device
    secret = secrets.token_urlsafe(32)
    env = server_env(database_url=test_database_url, broker=mosquitto, data_dir=tmp_path) | {"BROKER_AUTH_SECRET": secret}
    server = HttpServer(env, tmp_path, broker_auth_port=free_port()).start()
    alice = make_user()
    form = urllib.parse.urlencode({"username": alice.device.mqtt_username, "password": alice.device.mqtt_password,
                                   "vhost": "/", "client_id": alice.device.mqtt_client_id}).encode()

    def post(port: int, path: str) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(form)}\r\nConnection: close\r\n\r\n").encode()
        status, _, body = raw(port, head + form)
        return status, body

    try:
        # when
        loopback = post(server.broker_auth_port, f"/broker-auth/{secret}/user")
        wrong_secret = post(server.broker_auth_port, "/broker-auth/not-it/user")
        other_path = post(server.broker_auth_port, "/health/")
        public = [post(server.port, path) for path in (f"/broker-auth/{secret}/user", f"/%62roker-auth/{secret}/user",
                                                       f"//broker-auth/{secret}/user", f"/x/../broker-auth/{secret}/user")]
    finally:
        server.stop()

    # then: the broker gets its answer; a phone gets 404 on the public port, secret or not
    assert loopback == (200, b"allow")
    assert (wrong_secret[0], error_code(wrong_secret[1])) == (404, "not_found")
    assert (other_path[0], error_code(other_path[1])) == (404, "not_found")
    assert [(status, error_code(body)) for status, body in public] == [(404, "not_found")] * 4
