"""Database outages: the workers reconnect by themselves, HTTP answers 503 meanwhile.

Destructive, so on a stack of their own (`spare`, for this module): a second throw-away
PostgreSQL cluster, its own broker (of the suite's kind), the relay and presence workers and granian, all
real processes. The relay there looks at the outbox only when NOTIFY wakes it (its idle
recheck is 60 s), so delivery within 5 s proves that its LISTEN is back too. Rows are
written straight into the outbox and read by a server-side MQTT observer.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from pathlib import Path

import psycopg
import pytest

from chatserver.relay import ADVISORY_LOCK_KEY

from tests.support.mqtt import MqttProbe
from tests.support.postgres import PostgresCluster, sql
from tests.support.stack import HttpServer, ServerProcess, migrated_database, server_env, wait_until
from tests.support.stack import call, call_with_headers

pytestmark = pytest.mark.slow

CHAT = 900_000_002
TOPIC = f"chat/chats/{CHAT}"
RESUME_WITHIN = 5.0
UNAVAILABLE = {"error": {"code": "database_unavailable", "message": "The database is unavailable; try again shortly."}}


class Spare:
    def __init__(self, workdir: Path, new_broker) -> None:
        self.workdir = workdir
        self.new_broker = new_broker
        self.pg = self.broker = None
        self.processes: list[ServerProcess] = []

    def start(self) -> None:
        workdir = self.workdir
        self.pg = PostgresCluster().start()
        self.db_url = migrated_database(self.pg, "chat", data_dir=workdir)
        self.broker, _ = self.new_broker("chat-spare-")
        self.broker.start()
        env = server_env(database_url=self.db_url, broker=self.broker, data_dir=workdir)
        env["RELAY_IDLE_RECHECK"] = "60"
        self.env = env
        self.relay = ServerProcess("relay", [sys.executable, "manage.py", "worker", "relay"], env, workdir)
        self.presence = ServerProcess("presence", [sys.executable, "manage.py", "worker", "presence"], env, workdir)
        self.web = HttpServer(env, workdir, broker_auth_port=getattr(self.broker, "auth_port", None))
        for process in (self.relay, self.presence, self.web):
            self.processes.append(process)
            process.start()
        self.url = self.web.url

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.broker is not None:
            self.broker.stop()
            shutil.rmtree(self.broker.workdir, ignore_errors=True)
        if self.pg is not None:
            self.pg.stop()

    def sql(self, query: str, params=()) -> list[tuple]:
        return sql(self.db_url, query, params)

    def enqueue(self, numbers) -> None:
        """One transaction: a row per number, for the chat topic, in that order."""
        with psycopg.connect(self.db_url) as conn:
            for n in numbers:
                conn.execute(
                    "INSERT INTO chat_outbox (created_at, access, payload, user_ids, chat_id)"
                    " VALUES (now(), '[]', %s, '[]', %s)",
                    [json.dumps({"n": n}), CHAT],
                )

    def heartbeat_at(self):
        rows = self.sql("SELECT heartbeat_at, broker_connected FROM chat_relay_status WHERE id = 1")
        return rows[0] if rows else (None, False)

    def healthy(self) -> bool:
        status, body = call(f"{self.url}/health/")
        return status == 200 and body["relay"] == "running" and body["broker"] == "up"

    def log_count(self, process: ServerProcess, text: str) -> int:
        return process.log_path.read_text(errors="replace").count(text)


@pytest.fixture(scope="module")
def spare(tmp_path_factory, new_broker):
    stack = Spare(tmp_path_factory.mktemp("spare"), new_broker)
    try:
        stack.start()
        wait_until(stack.healthy, 30, "the spare stack healthy")
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def observer(spare):
    probe = MqttProbe(spare.broker.host, spare.broker.port)
    assert probe.connect(spare.broker.admin_username, spare.broker.admin_password,
                         f"test-observer-{secrets.token_hex(4)}", clean_session=True) == 0
    assert probe.subscribe(TOPIC) == 1
    yield probe
    probe.close()


def numbers(probe) -> list[int]:
    """What arrived, each number once (delivery is at-least-once), in first-arrival order."""
    seen = []
    for payload in probe.messages_on(TOPIC):
        n = json.loads(payload)["n"]
        if n not in seen:
            seen.append(n)
    return seen


def assert_alive(*processes: ServerProcess) -> None:
    for process in processes:
        assert process.alive(), f"{process.name} died:\n{process.log_tail()}"


def test_the_workers_survive_their_database_connections_being_terminated(spare, observer):
    # given: delivery works, and both workers hold their locks (the presence worker may
    # still be starting when the relay already delivers)
    spare.enqueue([1])
    wait_until(lambda: numbers(observer) == [1], 10, "row 1")
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    wait_until(lambda: spare.sql(locks) == [(2,)], 15, "both workers holding their locks")
    relay_outages = spare.log_count(spare.relay, "database unavailable")
    presence_outages = spare.log_count(spare.presence, "database unavailable")

    # when: every other session of the database is cut (LISTEN, locks, Django's)
    (terminated_at,) = spare.sql("SELECT now()")[0]
    holders = {pid for (pid,) in spare.sql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")}
    killed = spare.sql(
        "WITH others AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE datname = 'chat'"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend')"
        " SELECT pid FROM others WHERE pg_terminate_backend(pid)"
    )
    assert len(holders) == 2 and holders <= {pid for (pid,) in killed}  # both workers' sessions
    wait_until(lambda: spare.log_count(spare.relay, "database unavailable") > relay_outages, 10,
               "the relay to notice")
    wait_until(lambda: spare.log_count(spare.presence, "database unavailable") > presence_outages, 10,
               "the presence worker to notice")
    started = time.monotonic()
    spare.enqueue([2, 3])

    # then: live delivery again, the heartbeat again, both workers holding their locks
    wait_until(lambda: numbers(observer) == [1, 2, 3], RESUME_WITHIN, "rows 2 and 3 within 5 s")
    assert time.monotonic() - started < RESUME_WITHIN
    wait_until(lambda: spare.heartbeat_at()[0] > terminated_at, 5, "a fresh heartbeat")
    wait_until(lambda: spare.sql(locks) == [(2,)], 5, "both workers' locks taken again")
    assert_alive(spare.relay, spare.presence, spare.web)


def test_the_workers_survive_a_postgresql_restart_with_nothing_lost_and_order_kept(spare, observer):
    # given: a phone online (the presence worker saw it), and rows in flight
    status, alice = call(f"{spare.url}/accounts/signup", "POST",
                         {"username": f"alice-{secrets.token_hex(3)}", "password": "pass word 123"})
    assert status == 201
    _, bob = call(f"{spare.url}/accounts/signup", "POST",
                  {"username": f"bob-{secrets.token_hex(3)}", "password": "pass word 123"})
    phone = MqttProbe(spare.broker.host, spare.broker.port, auto_reconnect=True)
    presence_topic = f"chat/presence/{alice['id']}/{alice['mqtt']['client_id']}"
    m = alice["mqtt"]
    assert phone.connect(m["username"], m["password"], m["client_id"]) == 0
    try:
        def presence_seen_by_bob():
            return call(f"{spare.url}/accounts/{alice['id']}/", token=bob["token"])[1]["presence"]

        assert phone.publish(presence_topic, "online", retain=True)
        wait_until(lambda: presence_seen_by_bob() == "online", 10, "alice online")
        relay_outages = spare.log_count(spare.relay, "database unavailable")
        spare.enqueue(range(1, 301))

        # when: PostgreSQL restarts while the relay drains them
        spare.pg.stop_server()
        try:
            wait_until(lambda: spare.log_count(spare.relay, "database unavailable") > relay_outages, 10,
                       "the relay to notice")
        finally:
            spare.pg.start_server()
        (returned_at,) = spare.sql("SELECT now()")[0]
        started = time.monotonic()
        spare.enqueue(range(301, 311))

        # then: everything, each chat's rows in order, within 5 s of the database's return
        wait_until(lambda: len(numbers(observer)) >= 310, RESUME_WITHIN, "all 310 rows within 5 s")
        assert time.monotonic() - started < RESUME_WITHIN
        assert numbers(observer) == list(range(1, 311))
        wait_until(lambda: spare.heartbeat_at()[0] > returned_at, 5, "a fresh heartbeat")
        assert spare.heartbeat_at()[1] is True
        # ...and presence goes on being applied
        assert phone.publish(presence_topic, "away", retain=True)
        wait_until(lambda: presence_seen_by_bob() == "away", 10, "alice away")
    finally:
        phone.close()
    assert spare.sql("SELECT count(*) FROM chat_outbox") == [(0,)]
    assert_alive(spare.relay, spare.presence, spare.web)


RELAY_LOCK = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s"
RELAY_LOCK_LOW_BITS = ADVISORY_LOCK_KEY & 0xFFFFFFFF


def test_a_relay_whose_lock_was_lost_takes_it_again_before_sending_and_one_relay_stays_active(spare, observer):
    # given: a second relay standing by
    standby = ServerProcess("relay-standby", [sys.executable, "manage.py", "worker", "relay"], spare.env,
                            spare.workdir).start()
    relays = (spare.relay, standby)
    try:
        wait_until(lambda: spare.log_count(standby, "another relay is active; standing by") == 1, 15,
                   "the second relay to stand by")
        activations = sum(spare.log_count(r, "relay active") for r in relays)
        [(active,)] = spare.sql(RELAY_LOCK, [RELAY_LOCK_LOW_BITS])

        # when: the active relay's own session (its LISTEN and its lock) is cut, mid-stream
        spare.enqueue(range(1, 201))
        assert spare.sql("SELECT pg_terminate_backend(%s)", [active]) == [(True,)]
        spare.enqueue(range(201, 401))

        # then: one of them took the lock (exactly one activation), and nothing was lost
        # or reordered
        wait_until(lambda: len(numbers(observer)) >= 400, 15, "all 400 rows")
        assert numbers(observer) == list(range(1, 401))
        # The relay notices the lost session at its next step, which may come after the
        # last rows went out (at least once: they were sent while the lock was going).
        wait_until(lambda: sum(spare.log_count(r, "relay active") for r in relays) > activations, 10,
                   "a relay to become active again")
        time.sleep(1.0)  # and only one: no second activation follows
        assert sum(spare.log_count(r, "relay active") for r in relays) == activations + 1
        assert len(spare.sql(RELAY_LOCK, [RELAY_LOCK_LOW_BITS])) == 1
        assert_alive(*relays)
    finally:
        standby.stop()
    wait_until(lambda: len(spare.sql(RELAY_LOCK, [RELAY_LOCK_LOW_BITS])) == 1, 10, "a relay active again")
    wait_until(spare.healthy, 10, "the spare stack healthy again")


def test_a_relay_that_only_stood_by_leaves_the_heartbeat_to_the_active_one_when_it_stops(spare):
    # given
    standby = ServerProcess("relay-standby-2", [sys.executable, "manage.py", "worker", "relay"], spare.env,
                            spare.workdir).start()
    try:
        wait_until(lambda: spare.log_count(standby, "another relay is active; standing by") == 1, 15,
                   "the second relay to stand by")
    finally:
        # when
        standby.stop()

    # then
    assert spare.heartbeat_at()[1] is True
    assert spare.log_count(standby, "relay active") == 0
    assert_alive(spare.relay)


def test_http_answers_503_in_the_error_envelope_while_the_database_is_down(spare):
    # given: a signed-up user, so the token is real
    status, alice = call(f"{spare.url}/accounts/signup", "POST",
                         {"username": f"carol-{secrets.token_hex(3)}", "password": "pass word 123"})
    assert status == 201

    # when
    spare.pg.stop_server()
    try:
        me = call(f"{spare.url}/accounts/me/", token=alice["token"])
        signup = call(f"{spare.url}/accounts/signup/", "POST", {"username": "dave-x", "password": "pass word 123"})
        health = call(f"{spare.url}/health/")
        retry_after = call_with_headers(f"{spare.url}/accounts/me/", token=alice["token"])[1].get("Retry-After")
    finally:
        spare.pg.start_server()

    # then: 503 with the envelope (and when to try again), never a 500 page; and all is
    # well once it is back
    assert me == (503, UNAVAILABLE)
    assert retry_after == "2"
    assert signup == (503, UNAVAILABLE)
    assert health == (503, {"status": "unavailable", "database": "down", "relay": "unknown", "broker": "unknown"})
    wait_until(lambda: call(f"{spare.url}/accounts/me/", token=alice["token"])[0] == 200, 5, "200 again")
    assert spare.sql("SELECT count(*) FROM accounts_user WHERE username = 'dave-x'") == [(0,)]
    assert_alive(spare.relay, spare.presence, spare.web)


def test_a_postgresql_restart_between_requests_is_not_seen_by_a_phone(spare):
    # given: the web workers' threads hold persistent connections (CONN_MAX_AGE)
    status, alice = call(f"{spare.url}/accounts/signup", "POST",
                         {"username": f"erin-{secrets.token_hex(3)}", "password": "pass word 123"})
    assert status == 201
    assert {call(f"{spare.url}/accounts/me/", token=alice["token"])[0] for _ in range(32)} == {200}

    # when: PostgreSQL restarts while no request is under way
    spare.pg.stop_server()
    spare.pg.start_server()

    # then: every request answers as before, the first one on each broken connection
    # too: the connection health check (CONN_HEALTH_CHECKS, a `SELECT 1` before a
    # request's first query) finds it broken and opens another. Without it, each
    # thread's first request afterwards answers 503 database_unavailable (Retry-After:
    # 2), and the phone's retry then succeeds.
    answers = [call(f"{spare.url}/accounts/me/", token=alice["token"])[0] for _ in range(32)]
    assert answers == [200] * 32
    assert_alive(spare.relay, spare.presence, spare.web)

