"""Faults under load: a process killed, frozen or restarted while messages flow.

Each test runs its own stack (tests/support/faults.py: its own PostgreSQL database in a
cluster of this module, its own Mosquitto, relay and granian), so that killing things
leaves the rest of the suite alone. Four users' phones (paho, persistent sessions) listen
on their user topics while 40 messages/s go to two direct chats and a group over HTTP;
mid-load the fault strikes. Then, as the README promises:

- every accepted message (201/200) reached every member of its chat, live or through the
  catch-up (`POST /chats/sync/` from the last version held without a gap);
- what each phone received live was in per-chat order (duplicates dropped by id);
- live delivery resumed within 5 s of the fault's end: a message POSTed after the end
  reached every phone within 5 s of it.

The last test has no load: it kills the relay while it drains a backlog, and counts the
copies a phone received (a killed relay resends at most its window, chatserver/relay.py).
"""

import json
import secrets
import time

import psycopg
import pytest

from chatserver import models as chatserver_models
from tests.support.faults import ChatWorld, LivePhone, SteadyLoad, signup
from tests.support.stack import call, call_with_headers, wait_until

pytestmark = pytest.mark.slow

RATE = 40  # messages/s, over 3 chats
RESUME_WITHIN = 5.0  # seconds from the fault's end to live delivery


@pytest.fixture
def world(fault_stack):
    world = ChatWorld(fault_stack)
    yield world
    world.close()


def assert_nothing_lost_and_in_order(world, outcome) -> None:
    assert outcome.missing == {}, f"{outcome}\n{world.stack.logs()}"
    assert outcome.unexpected == {}
    assert outcome.out_of_order == {}


def assert_live_again(world, resumed: dict) -> None:
    assert world.stack.relay.alive(), f"the relay died:\n{world.stack.logs()}"
    late = {name: t for name, t in resumed.items() if t is None or t > RESUME_WITHIN}
    assert late == {}, f"live delivery not back within {RESUME_WITHIN} s: {resumed}\n{world.stack.logs()}"


def test_relay_killed_mid_load_and_restarted_nothing_accepted_is_lost(fault_stack, world):
    # given: messages flowing
    load = SteadyLoad(fault_stack.url, world.chats, rate=RATE).start()
    load.wait_accepted(40)

    # when: the relay dies without a chance to clean up, and a new one starts once 20
    # more messages were accepted without it
    fault_stack.relay.kill()
    load.wait_accepted(20)
    fault_stack.start_relay()
    fault_end = time.monotonic()
    resumed = world.live_again_after(fault_end, load, within=RESUME_WITHIN)
    load.stop()
    world.settle(load)

    # then
    outcome = world.check(load)
    print(f"relay killed: resumed after {resumed} s; {outcome}")
    assert_live_again(world, resumed)
    assert_nothing_lost_and_in_order(world, outcome)
    assert outcome.refused == {}


def test_broker_killed_mid_load_and_restarted_nothing_accepted_is_lost(fault_stack, world):
    # given
    load = SteadyLoad(fault_stack.url, world.chats, rate=RATE).start()
    load.wait_accepted(40)

    # when: the broker dies without saving (SIGKILL) and comes back, same config and
    # persistence directory, once 20 more messages were accepted without it
    fault_stack.broker.kill()
    load.wait_accepted(20)
    fault_stack.broker.start()
    fault_end = time.monotonic()
    resumed = world.live_again_after(fault_end, load, within=RESUME_WITHIN)
    load.stop()
    world.settle(load)

    # then: what the broker lost, the catch-up has
    outcome = world.check(load)
    print(f"broker killed: resumed after {resumed} s; {outcome}")
    assert_live_again(world, resumed)
    assert_nothing_lost_and_in_order(world, outcome)
    assert outcome.refused == {}


def test_postgres_restarted_mid_load_refusals_are_503_and_nothing_accepted_is_lost(fault_stack, world):
    # given
    load = SteadyLoad(fault_stack.url, world.chats, rate=RATE).start()
    load.wait_accepted(40)

    # when: the cluster stops (fast shutdown: every connection cut) and starts again
    # once 10 POSTs were refused meanwhile
    fault_stack.pg.stop_server()
    try:
        load.wait_failed(10)
    finally:
        fault_stack.pg.start_server()
    fault_end = time.monotonic()
    resumed = world.live_again_after(fault_end, load, within=RESUME_WITHIN)
    load.stop()

    # then: refusals said 503 (not accepted, so free to be lost); the accepted ones all
    # arrived. A POST cut off mid-commit may have stored its message unacknowledged:
    # such a message may turn up in the catch-up.
    assert_live_again(world, resumed)
    world.settle(load)
    outcome = world.check(load, allow_unaccepted=True)
    print(f"postgres restarted: resumed after {resumed} s; {outcome}")
    assert set(outcome.refused) == {503}, outcome.refused
    assert outcome.refused[503] >= 10
    bodies = [s.body for s in load.failed()]
    assert [b for b in bodies if not isinstance(b, dict) or "not_json" in b] == []  # JSON, not a page
    assert outcome.missing == {}, f"{outcome}\n{world.stack.logs()}"
    assert outcome.out_of_order == {}


def test_broker_frozen_10_s_mid_load_nothing_accepted_is_lost(fault_stack, world):
    # given
    load = SteadyLoad(fault_stack.url, world.chats, rate=RATE).start()
    load.wait_accepted(40)

    # when: the broker hangs for 10 s (SIGSTOP: connections open, nothing answered)
    accepted_before = len(load.accepted())
    fault_stack.broker.freeze()
    try:
        time.sleep(10)  # the fault is a duration
    finally:
        fault_stack.broker.thaw()
    fault_end = time.monotonic()
    accepted_while_frozen = len(load.accepted()) - accepted_before
    resumed = world.live_again_after(fault_end, load, within=RESUME_WITHIN)
    load.stop()
    world.settle(load)

    # then: POSTs went on during the freeze (they never wait for the broker)
    outcome = world.check(load)
    print(f"broker frozen: {accepted_while_frozen} accepted while frozen; resumed after {resumed} s; {outcome}")
    assert accepted_while_frozen >= 0.5 * RATE * 10
    assert_live_again(world, resumed)
    assert_nothing_lost_and_in_order(world, outcome)
    assert outcome.refused == {}


def test_health_says_degraded_within_5_s_of_a_broker_freeze_and_ok_after_thaw(fault_stack, world):
    # given: messages flowing, the stack healthy
    load = SteadyLoad(fault_stack.url, world.chats, rate=10).start()
    load.wait_accepted(10)
    assert fault_stack.health()[1]["status"] == "ok"

    # when: the broker hangs (its sockets stay open: only the missing answers tell)
    fault_stack.broker.freeze()
    frozen_at = time.monotonic()
    try:
        status, degraded = wait_until(
            lambda: (h := fault_stack.health())[1].get("status") == "degraded" and h, 10,
            "/health/ to say degraded", interval=0.1,
        )
        noticed_after = time.monotonic() - frozen_at
        # ...and, kept frozen, the oldest undelivered message passes HEALTH_MAX_OUTBOX_AGE
        _, late = wait_until(
            lambda: (h := fault_stack.health())[1].get("outbox_oldest_age_s", 0) > 5.0 and h, 15,
            "the oldest pending row to be older than 5 s", interval=0.1,
        )
    finally:
        fault_stack.broker.thaw()
    thawed_at = time.monotonic()
    _, healthy = wait_until(lambda: (h := fault_stack.health())[1].get("status") == "ok" and h, 30,
                            "/health/ to say ok after the thaw", interval=0.1)
    ok_after = time.monotonic() - thawed_at
    load.stop()
    world.settle(load)

    # then
    print(f"broker frozen: degraded after {noticed_after:.2f} s ({degraded}); ok {ok_after:.2f} s after the thaw")
    assert status == 200
    assert noticed_after < 5.0
    assert (degraded["relay"], degraded["broker"]) == ("running", "down")
    assert degraded["outbox_pending"] >= 1
    assert (late["status"], late["broker"]) == ("degraded", "down")
    assert late["outbox_pending"] >= 1
    assert (healthy["broker"], healthy["relay"]) == ("up", "running")
    assert healthy["outbox_oldest_age_s"] <= 5.0
    assert_nothing_lost_and_in_order(world, world.check(load))


def test_poison_outbox_rows_mid_load_are_set_aside_and_good_messages_flow_on(fault_stack, world):
    # given
    load = SteadyLoad(fault_stack.url, world.chats, rate=RATE).start()
    load.wait_accepted(40)

    # when: two rows the relay cannot translate land in the outbox between good ones
    poison = fault_stack.sql(
        "INSERT INTO chat_outbox (created_at, access, payload, user_ids, chat_id) VALUES "
        "(now(), %s, '', '[]', NULL), "
        "(now(), '[]', %s, %s, NULL) RETURNING id",
        ['[{"op": "no_such_op"}]', '{"type": "message.created", "data": {}, "ts": "2026-01-01T00:00:00Z"}',
         '["x"]'],
    )
    poison_ids = sorted(row[0] for row in poison)
    fault_end = time.monotonic()
    resumed = world.live_again_after(fault_end, load, within=RESUME_WITHIN)
    load.stop()

    # then: the good messages flowed on, all of them, in order
    assert_live_again(world, resumed)
    world.settle(load)
    outcome = world.check(load)
    print(f"poison rows: resumed after {resumed} s; {outcome}")
    assert_nothing_lost_and_in_order(world, outcome)
    # ...and the poison rows left the outbox
    wait_until(lambda: fault_stack.sql("SELECT count(*) FROM chat_outbox WHERE id = ANY(%s)", [poison_ids])
               == [(0,)], 10, "the poison rows to leave the outbox")
    # set aside, not dropped: both in the dead-letter table, counted by /health/
    table = chatserver_models.DeadLetter._meta.db_table
    assert fault_stack.sql(f"SELECT count(*) FROM {table}") == [(2,)]
    status, health = fault_stack.health()
    assert status == 200
    assert health["dead_letters"] == 2



BACKLOG = 6000  # rows: about three seconds of draining
KILLS = 2
WINDOW = 100  # the relay's RELAY_WINDOW here: below its batch of 500, so a batch resent whole shows


def queue_numbered(stack, user_id: int, first: int, last: int) -> None:
    """Outbox rows n = first..last, in order, each a `message.created` to `user_id`'s topic
    only: id n, in chat n % 3 with seq n // 3 + 1 (so seqs grow with n in each chat)."""
    stack.sql(
        "INSERT INTO chat_outbox (created_at, access, payload, user_ids, chat_id) "
        "SELECT now(), '[]', json_build_object('type', 'message.created', 'chat', n %% 3, "
        "'data', json_build_object('id', n, 'chat', n %% 3, 'seq', n / 3 + 1))::text, %s, NULL "
        "FROM generate_series(%s::int, %s::int) AS n ORDER BY n",
        [json.dumps([user_id]), first, last],
    )


def test_relay_killed_twice_while_draining_a_backlog_resends_at_most_its_window_each_time(fault_stack):
    # given: a phone (persistent session, QoS 1) on its user topic, the relay stopped,
    # and a backlog for it in the outbox, written straight in
    account = signup(fault_stack.url, f"drain-{secrets.token_hex(3)}")
    phone = LivePhone(account)
    try:
        assert phone.subscribed.wait(10)
        fault_stack.relay.stop()
        fault_stack.relay.env["RELAY_WINDOW"] = str(WINDOW)  # for the relays started below
        queue_numbered(fault_stack, account.id, 1, BACKLOG)

        # when: the relay starts, and is killed (SIGKILL) 0.1 s after it first deleted
        # rows (mid-batch: a batch of 500 takes about 0.25 s), twice; then a third one
        # drains the rest
        left_at_kill = []
        with psycopg.connect(fault_stack.database_url, autocommit=True) as db:
            def queued() -> int:
                return db.execute("SELECT count(*) FROM chat_outbox").fetchone()[0]

            for _ in range(KILLS):
                fault_stack.start_relay()
                before = queued()
                wait_until(lambda: queued() < before, 30, "the relay to delete rows", interval=0.002)
                time.sleep(0.1)  # the fault is a moment
                fault_stack.relay.kill()
                left_at_kill.append(queued())
        fault_stack.start_relay()
        # ...and once it is done, one more row: behind every copy on the broker's one
        # connection to the phone, so when it is there, every copy is
        wait_until(lambda: fault_stack.sql("SELECT count(*) FROM chat_outbox") == [(0,)], 30, "the outbox to empty")
        queue_numbered(fault_stack, account.id, BACKLOG + 1, BACKLOG + 1)
        wait_until(lambda: phone.has(BACKLOG + 1), 10, "the last row at the phone")

        # then: every message arrived, the first copies in per-chat order, and no more
        # copies beyond the first than KILLS x WINDOW: such a copy is a relay's publish of
        # a row that an earlier relay had sent and not deleted when killed (each relay
        # publishes a row once, to this one topic; the phone stays connected, so the
        # broker redelivers nothing), and each killed relay left at most WINDOW of those.
        # Counting each such copy against the last earlier relay that left its row behind
        # counts no row of a relay twice; the bound is reached when both kills hit a full
        # window.
        received = [m for _, m in phone.messages() if m["id"] <= BACKLOG]
        first, disorder, top = set(), [], {}
        for m in received:
            if m["id"] in first:
                continue
            first.add(m["id"])
            if m["seq"] <= top.get(m["chat"], 0):
                disorder.append((m["chat"], m["seq"], top[m["chat"]]))
            top[m["chat"]] = max(top.get(m["chat"], 0), m["seq"])
        duplicates = len(received) - len(first)
        print(f"backlog {BACKLOG}, relay window {WINDOW}: {left_at_kill} rows left at the kills, "
              f"{duplicates} duplicates")
        assert all(0 < left < BACKLOG for left in left_at_kill), left_at_kill  # killed mid-drain
        assert first == set(range(1, BACKLOG + 1))
        assert disorder == []
        assert duplicates <= KILLS * WINDOW, f"{duplicates} duplicates\n{fault_stack.logs()}"
    finally:
        phone.close()


def post_message(url: str, chat_id: int, token: str, content: str) -> tuple[int, str | None, dict]:
    """(status, Retry-After, JSON body) of one message POST."""
    status, headers, body = call_with_headers(f"{url}/chats/{chat_id}/messages/", "POST", {"content": content}, token)
    return status, headers.get("Retry-After"), body


def test_sends_wait_at_the_door_while_delivery_runs_late_and_not_after_an_outage(fault_stack):
    # given: a web tier that refuses sends once an event queued while delivery works is
    # 2 s old, a direct chat, and with the relay stopped a backlog older than that
    fault_stack.http.stop()
    fault_stack.http.env["INGEST_MAX_OUTBOX_AGE"] = "2"
    fault_stack.http.start()
    alice = signup(fault_stack.url, f"door-a-{secrets.token_hex(3)}")
    bob = signup(fault_stack.url, f"door-b-{secrets.token_hex(3)}")
    status, chat = call(f"{fault_stack.url}/chats/", "POST", {"members": [bob.id]}, alice.token)
    assert status == 201, chat
    fault_stack.relay.stop()
    queue_numbered(fault_stack, bob.id, 1, 100_000)
    time.sleep(2.5)

    def stored() -> int:
        return fault_stack.sql("SELECT count(*) FROM chats_message WHERE chat_id = %s", [chat["id"]])[0][0]

    def outbox() -> int:
        return fault_stack.sql("SELECT count(*) FROM chat_outbox")[0][0]

    # when the relay is down (an outage, not overload): accepted and queued
    during_outage = post_message(fault_stack.url, chat["id"], alice.token, "while the relay is down")
    # when it runs again and drains what the outage left, for longer than the threshold
    # (and the web processes' verdict is a second old at most): accepted, whatever its age
    fault_stack.start_relay()
    wait_until(lambda: fault_stack.health()[1].get("relay") == "running"
               and fault_stack.health()[1].get("broker") == "up", 15, "the relay running, the broker up")
    time.sleep(2 + 1.1)
    draining = post_message(fault_stack.url, chat["id"], alice.token, "while the outage's backlog drains")
    still_draining = outbox()
    wait_until(lambda: outbox() == 0, 90, "the outbox to empty")

    # when more comes in than it delivers (a burst queued while it works), and the oldest
    # of it is past the threshold: refused at the door, nothing written
    queue_numbered(fault_stack, bob.id, 100_001, 200_000)
    time.sleep(2 + 1.1)
    before = stored()
    late = post_message(fault_stack.url, chat["id"], alice.token, "while delivery runs late")
    after_refusal = stored()
    overloaded_with = outbox()
    # once it caught up: accepted again
    wait_until(lambda: outbox() == 0, 90, "the outbox to empty")
    time.sleep(1.1)
    caught_up = post_message(fault_stack.url, chat["id"], alice.token, "caught up")

    # then
    assert during_outage[0] == 201
    assert draining[0] == 201 and still_draining > 0, (draining, still_draining)
    assert (late[0], late[1], late[2]["error"]["code"]) == (503, "2", "overloaded"), late
    assert overloaded_with > 0
    assert after_refusal == before
    assert caught_up[0] == 201
