"""Link previews: the `previews` worker against a real local HTTP server, a real relay
and broker, and real phones' MQTT connections."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chats.models import LinkPreview, Message, PreviewJob
from chats.previews import first_link
from chats.workers import PreviewWorker
from chatserver.models import OutboxEvent
from tests.support.factories import make_user, send_message
from tests.support.mqtt import MqttProbe
from tests.support.stack import ServerProcess, server_env, wait_until, worker_in_thread

PAGE = (b"<!doctype html><html><head><title>Fallback title</title>"
        b'<meta property="og:title" content="The crag &amp; its routes">'
        b'<meta property="og:description" content="Grades, approach and  topo.">'
        b'<meta property="og:image" content="/img/crag.jpg"></head><body>hi</body></html>')
MIB = 1024 * 1024


class Site(ThreadingHTTPServer):
    """A real HTTP server in a thread; `requests` lists the paths it was asked for."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.big_sent, self.big_cut = 0, False
        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _html(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        site: Site = self.server
        site.requests.append(self.path)
        if self.path.startswith("/page"):
            name = self.path.split("/")[-1]
            self._html(PAGE.replace(b"The crag", name.encode()) if name != "page" else PAGE)
        elif self.path.startswith("/redirect/"):
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{left - 1}" if left > 1 else "/page/after-redirects")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            # 10 MiB: the title first, a description only after 1 MiB of padding.
            head = b"<html><head><title>Big page</title><!--"
            tail = b'--><meta property="og:description" content="past the limit"></head></html>'
            size = 10 * MIB
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                self.wfile.write(head)
                site.big_sent = len(head)
                padding = b"x" * 65536
                while site.big_sent < MIB:
                    self.wfile.write(padding)
                    site.big_sent += len(padding)
                self.wfile.write(tail)
                site.big_sent += len(tail)
                while site.big_sent < size:
                    self.wfile.write(padding)
                    site.big_sent += len(padding)
            except OSError:
                site.big_cut = True  # the reader hung up at its limit
        elif self.path.startswith("/slow"):
            seconds = float(self.path.split("/")[-1])
            time.sleep(seconds)
            try:
                self._html(PAGE.replace(b"The crag", b"Slow"))
            except OSError:
                pass
        elif self.path == "/image":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"\x89PNG")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def site():
    server = Site()
    yield server
    server.stop()


@pytest.fixture
def previews_on(settings):
    settings.LINK_PREVIEWS = True
    settings.LINK_PREVIEW_ALLOW_PRIVATE = True
    settings.LINK_PREVIEW_TIMEOUT = 3.0
    settings.LINK_PREVIEW_MAX_BYTES = 512 * 1024
    return settings


@pytest.fixture
def preview_worker(previews_on, transactional_db):
    """The previews worker, running in a thread of this process (its own DB connection)."""
    with worker_in_thread(PreviewWorker) as worker:
        yield worker


def direct(alice, bob) -> int:
    return alice.client.post("/chats/", {"members": [bob.id]}, format="json").json()["id"]


def jobs_done(timeout: float = 10):
    wait_until(lambda: not PreviewJob.objects.exists(), timeout, "the preview jobs to be done")


def preview_of(message_id: int):
    return Message.objects.get(id=message_id).link_preview


def test_the_first_link_is_found_without_the_sentence_s_punctuation():
    assert first_link("see https://example.org/a?b=1, and http://other.example") == "https://example.org/a?b=1"
    assert first_link("(HTTP://Example.org/x).") == "HTTP://Example.org/x"
    assert first_link("no link, ftp://example.org, mailto:a@b") is None
    assert first_link("glued:xhttps://example.org") is None


@pytest.mark.django_db(transaction=True)
def test_a_phone_gets_message_updated_with_the_preview(relay, broker, site, preview_worker):
    # given
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    probe = MqttProbe(broker.host, broker.port)
    assert probe.connect(**bob.mqtt) == 0
    assert probe.subscribe(f"chat/users/{bob.id}") == 1
    try:
        # when
        url = site.url("/page")
        sent = send_message(alice, cid, f"look {url}, nice")

        # then: the send answers at once without one; the preview follows
        assert sent["link_preview"] is None
        created, updated = probe.wait_for(2, timeout=10)
        created, updated = json.loads(created.payload), json.loads(updated.payload)
        assert (created["type"], created["data"]["link_preview"]) == ("message.created", None)
        assert updated["type"] == "message.updated"
        assert updated["version"] == created["version"] + 1
        assert updated["data"] == {**sent, "version": updated["version"], "unread_count": 1, "link_preview": {
            "url": url, "title": "The crag & its routes", "description": "Grades, approach and topo.",
            "image": site.url("/img/crag.jpg"),
        }}
        history = bob.client.get(f"/chats/{cid}/messages/").json()["results"]
        assert history[-1]["link_preview"] == updated["data"]["link_preview"]
        assert site.requests == ["/page"]
    finally:
        probe.close()


@pytest.mark.django_db(transaction=True)
def test_a_url_is_fetched_once_and_cached(site, preview_worker):
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)
    url = site.url("/page")

    first = send_message(alice, cid, url)
    jobs_done()
    second = send_message(bob, cid, f"same {url}")
    jobs_done()

    assert preview_of(first["id"]) == preview_of(second["id"]) is not None
    assert site.requests == ["/page"]
    assert LinkPreview.objects.get(url=url).data["title"] == "The crag & its routes"


@pytest.mark.django_db(transaction=True)
def test_loopback_is_never_fetched_without_the_setting(site, preview_worker, settings):
    # given
    settings.LINK_PREVIEW_ALLOW_PRIVATE = False
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)

    # when: loopback by address and by name, a private and a link-local address
    messages = [send_message(alice, cid, f"{link}") for link in (
        site.url("/page"), site.url("/page").replace("127.0.0.1", "localhost"),
        "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
    )]
    jobs_done()

    # then
    assert site.requests == []
    assert [preview_of(m["id"]) for m in messages] == [None] * 5


@pytest.mark.django_db(transaction=True)
def test_three_redirects_are_followed_and_a_fourth_is_not(site, preview_worker):
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)

    three = send_message(alice, cid, site.url("/redirect/3"))
    jobs_done()
    four = send_message(alice, cid, site.url("/redirect/4"))
    jobs_done()

    assert preview_of(three["id"])["title"] == "after-redirects & its routes"
    assert preview_of(four["id"]) is None
    # the fourth redirect's target was never asked for
    assert site.requests == ["/redirect/3", "/redirect/2", "/redirect/1", "/page/after-redirects",
                             "/redirect/4", "/redirect/3", "/redirect/2", "/redirect/1"]


@pytest.mark.django_db(transaction=True)
def test_a_10_mib_page_is_cut_at_the_limit(site, preview_worker):
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)

    big = send_message(alice, cid, site.url("/big"))
    jobs_done()

    # the title (first bytes) is read; the description after 1 MiB never was
    assert preview_of(big["id"]) == {"url": site.url("/big"), "title": "Big page", "description": None, "image": None}
    wait_until(lambda: site.big_cut, 10, "the server to see the reader hang up")
    assert site.big_sent < 10 * MIB


@pytest.mark.django_db(transaction=True)
def test_a_slow_page_times_out_and_holds_up_nothing_else(site, preview_worker):
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)

    started = time.monotonic()
    slow = send_message(alice, cid, site.url("/slow/6"))
    fast = send_message(alice, cid, site.url("/page"))
    not_html = send_message(alice, cid, site.url("/image"))
    jobs_done(timeout=8)
    elapsed = time.monotonic() - started

    assert preview_of(slow["id"]) is None
    assert preview_of(fast["id"])["title"] == "The crag & its routes"
    assert preview_of(not_html["id"]) is None
    assert elapsed < 4.5  # the 3 s limit, not the page's 6 s


@pytest.mark.django_db(transaction=True)
def test_editing_the_link_previews_the_new_one_and_deleting_drops_it(site, preview_worker):
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)
    sent = send_message(alice, cid, site.url("/page/first"))
    jobs_done()
    assert preview_of(sent["id"])["title"] == "first & its routes"

    edited = alice.client.patch(f"/chats/{cid}/messages/{sent['id']}/", {"content": f"now {site.url('/page/second')}"},
                                format="json").json()
    assert edited["link_preview"] is None  # the old page's preview goes with the edit
    jobs_done()
    assert preview_of(sent["id"])["title"] == "second & its routes"
    same = alice.client.patch(f"/chats/{cid}/messages/{sent['id']}/", {"content": f"still {site.url('/page/second')}"},
                              format="json").json()
    assert same["link_preview"]["title"] == "second & its routes"  # the same link keeps it
    assert not PreviewJob.objects.exists()

    deleted = alice.client.patch(f"/chats/{cid}/messages/{sent['id']}/", {"deleted": True}, format="json").json()
    assert deleted["link_preview"] is None
    assert preview_of(sent["id"]) is None


@pytest.mark.django_db(transaction=True)
def test_a_message_deleted_before_its_preview_gets_none(site, preview_worker):
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)
    sent = send_message(alice, cid, site.url("/slow/1"))
    alice.client.patch(f"/chats/{cid}/messages/{sent['id']}/", {"deleted": True}, format="json")
    jobs_done()

    message = Message.objects.get(id=sent["id"])
    assert (message.deleted, message.link_preview) == (True, None)


@pytest.mark.django_db
def test_with_previews_off_nothing_is_queued(settings):
    settings.LINK_PREVIEWS = False
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)

    send_message(alice, cid, "https://example.org/")

    assert not PreviewJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_fetch_and_started_again_still_previews_the_job(
    site, test_database_url, broker, tmp_path
):
    # given: a real `manage.py worker previews`
    env = {**server_env(database_url=test_database_url, broker=broker, data_dir=tmp_path),
           "LINK_PREVIEW_ALLOW_PRIVATE": "on"}
    args = [sys.executable, "manage.py", "worker", "previews"]
    first = ServerProcess("previews", args, env, tmp_path).start()
    alice, bob = make_user(), make_user()
    cid = direct(alice, bob)
    try:
        # when: it is killed while it reads a page (2 s, within the limit)
        sent = send_message(alice, cid, site.url("/slow/2"))
        wait_until(lambda: site.requests, 10, f"the worker to fetch\n{first.log_tail()}")
        first.kill()
        time.sleep(2.5)
        assert preview_of(sent["id"]) is None
        assert PreviewJob.objects.count() == 1

        # then: started again, it does the job it had not finished
        second = ServerProcess("previews", args, env, tmp_path).start()
        try:
            wait_until(lambda: preview_of(sent["id"]), 15, f"the preview\n{second.log_tail()}")
        finally:
            second.stop()
    finally:
        first.stop()
    assert preview_of(sent["id"])["title"] == "Slow & its routes"
    assert site.requests == ["/slow/2", "/slow/2"]
    assert not PreviewJob.objects.exists()
