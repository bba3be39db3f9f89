"""Workers: the framework's rules, its database session, and chatserver/ free of the apps."""

import ast
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from chatserver import workers
from tests.support.stack import wait_until

CHATSERVER = Path(__file__).resolve().parents[2] / "chatserver"
APPS = {"accounts", "chats"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_no_module_of_chatserver_imports_an_app():
    # given
    files = sorted(CHATSERVER.rglob("*.py"))
    assert CHATSERVER / "relay.py" in files and CHATSERVER / "workers.py" in files

    # when
    offending = {
        str(path.relative_to(CHATSERVER)): sorted(m for m in imported_modules(path) if m.split(".")[0] in APPS)
        for path in files
    }

    # then
    assert {path: modules for path, modules in offending.items() if modules} == {}


def test_the_apps_register_their_workers():
    registered = workers.registered()

    assert sorted(registered) == ["presence", "previews", "push", "relay"]


def test_a_name_cannot_be_registered_twice_with_another_factory():
    # given
    factory = workers.registered()["relay"]

    # when / then: the same factory again is harmless, another one is refused
    workers.register(name="relay", factory=factory)
    with pytest.raises(ValueError, match="'relay' is already registered"):
        workers.register(name="relay", factory=lambda **kwargs: None)
    assert workers.registered()["relay"] is factory


def test_an_unknown_worker_name_is_refused_before_anything_runs():
    with pytest.raises(LookupError, match="no worker named 'no-such-worker'"):
        workers.run_forever(name="no-such-worker")


# --- the session (a real PostgreSQL) ----------------------------------------------------


class Listening(workers.Worker):
    name = "test-listener"
    listen = "chat_test_wakeup"


@pytest.mark.django_db
def test_a_wakeup_read_while_checking_the_session_is_not_lost_to_the_next_wait(test_database_url):
    # given: a notification that the per-step check reads, before the worker waits
    session = workers.Session(worker=Listening(), stop=threading.Event())
    session.open()
    try:
        with psycopg.connect(test_database_url, autocommit=True) as other:
            other.execute(f"NOTIFY {Listening.listen}")

        def checked_one():
            session.check()
            return session.notified

        wait_until(checked_one, 5, "the notification read by check()")

        # when
        started = time.monotonic()
        woken = session.wait(5.0)

        # then: at once, and only once
        assert woken is True
        assert time.monotonic() - started < 1.0
        assert session.wait(0.2) is False
    finally:
        session.close()


@pytest.mark.django_db
def test_a_dropped_session_is_noticed_by_check_without_a_query(test_database_url):
    # given
    session = workers.Session(worker=Listening(), stop=threading.Event())
    session.open()
    pid = session.conn.info.backend_pid
    try:
        # when
        with psycopg.connect(test_database_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])

        # then
        def raised():
            try:
                session.check()
            except workers.DATABASE_UNAVAILABLE:
                return True
            return False

        wait_until(raised, 5, "check() to raise")
    finally:
        session.close()


@pytest.mark.django_db
def test_a_worker_without_durable_commits_commits_without_the_flush_on_its_own_connection(
        test_database_url, tmp_path):
    # given: a process set up as `run()` sets up the relay's (Relay.durable_commits False)
    from chatserver.relay import Relay
    from tests.support.stack import ROOT, NoBroker, server_env

    assert Relay.durable_commits is False
    script = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "from chatserver.workers import commits_without_flush\n"
        "def show():\n"
        "    with connection.cursor() as c:\n"
        "        c.execute(\"SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'\")\n"
        "        return c.fetchone()\n"
        "before = show()\n"
        "commits_without_flush()\n"
        "print(before, show())\n"
    )

    # when
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env=server_env(database_url=test_database_url, broker=NoBroker(), data_dir=tmp_path))

    # then: its own connection says so as a client setting (the test cluster's default is
    # off already, from its command line; a stock cluster's is on)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "('off', 'command line') ('off', 'client')"
