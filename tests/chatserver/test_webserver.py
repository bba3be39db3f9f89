"""chatserver.webserver: what granian copies from the process's environment into every
request's environ is taken out again (pure logic; the whole stack runs on granian in the
tests that start `HttpServer`); and a worker whose main process is killed stops, even
while it is still loading the application (a real granian)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from chatserver.webserver import without_process_environment
from tests.support.stack import ROOT, child_pids, running, wait_until

PROCESS = {
    "DATABASE_URL": "postgres://chat:secret@db/chat",
    "HTTP_PORT": "8000",
    "HOME": "/root",
    "REQUEST_METHOD": "GET",
}


def seen_by_app(scope: dict) -> dict:
    """The environ the application gets when the server builds it as granian does: a copy
    of the process's environment, the request's own keys over it."""
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return [b""]

    without_process_environment(app, PROCESS)({**PROCESS, **scope}, lambda status, headers: None)
    return seen


def test_the_process_environment_does_not_reach_the_request():
    seen = seen_by_app({"REQUEST_METHOD": "POST", "PATH_INFO": "/chats/", "HTTP_HOST": "chat.example"})
    assert "DATABASE_URL" not in seen
    assert "HOME" not in seen
    # A setting named like a header is not taken for a `Port:` header.
    assert "HTTP_PORT" not in seen
    assert seen["PATH_INFO"] == "/chats/"
    assert seen["HTTP_HOST"] == "chat.example"


def test_what_the_server_sets_stays_even_when_the_process_environment_has_the_same():
    seen = seen_by_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/health/"})
    assert seen["REQUEST_METHOD"] == "GET"


def test_a_header_the_request_did_send_stays():
    seen = seen_by_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_PORT": "443"})
    assert seen["HTTP_PORT"] == "443"


def test_a_worker_still_loading_when_its_main_process_is_killed_stops_too(tmp_path):
    # given: granian with two workers, each taking 2 s to load its application
    granian = subprocess.Popen(
        [str(Path(sys.executable).parent / "granian"), "tests.support.slow_wsgi:application", "--interface", "wsgi",
         "--http", "1", "--no-ws", "--uds", str(tmp_path / "web.sock"), "--workers", "2"],
        cwd=ROOT, env={**os.environ, "SLOW_WSGI_SECONDS": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        def both_forked() -> list[int] | None:
            pids = child_pids(granian.pid)
            return pids if len(pids) == 2 else None

        workers = wait_until(both_forked, 10, "granian's two workers")

        # when: its main process is killed while they are still loading (the kernel's
        # death signal could not be asked for yet)
        granian.kill()
        granian.wait()

        # then: once loaded, they see their parent gone, and stop
        wait_until(lambda: not any(running(pid) for pid in workers), 10, "the orphaned workers to stop")
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
