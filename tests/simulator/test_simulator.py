"""The simulator (`android-client-sim/`, the `chat-sim` command) against the real stack.

Every test runs the installed `chat-sim` console script as a subprocess, like a QA
engineer would, against granian + relay + Mosquitto + PostgreSQL (`live_stack`), with
its profiles in a temporary home.
"""

import json
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.sim import CHAT_SIM, PASSWORD, SIM_SOURCE, assert_match_the_contract, ok_json

pytestmark = pytest.mark.django_db(transaction=True)

SCENARIOS = SIM_SOURCE / "scenarios"


def test_signup_login_me_and_logout(sim):
    # when
    alice = ok_json(sim("--profile", "alice", "signup", "alice", "--password", PASSWORD, "--json"))
    me = ok_json(sim("-p", "alice", "me", "--json"))
    tablet = ok_json(sim("-p", "tablet", "login", "alice", "--password", PASSWORD, "--json"))

    # then: one user, two devices with their own MQTT identities
    assert me["id"] == alice["id"] == tablet["id"]
    assert me["username"] == "alice"
    assert me["mqtt"]["user_topic"] == f"chat/users/{alice['id']}"
    assert tablet["mqtt"]["client_id"] != alice["mqtt"]["client_id"]

    # when: the phone logs out
    assert ok_json(sim("-p", "alice", "logout", "--json")) == {"logged_out": True}

    # then: that profile has no session any more, the tablet's still works
    again = sim("-p", "alice", "me")
    assert again.returncode == 2
    assert "not signed in" in again.stderr
    assert ok_json(sim("-p", "tablet", "me", "--json"))["id"] == alice["id"]


def test_wrong_password_prints_the_server_error_envelope(sim):
    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)

    result = sim("-p", "other", "login", "alice", "--password", "wrong password", "--json")

    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "status": 401, "error": {"code": "invalid_credentials", "message": "Wrong username or password."},
    }


def test_create_a_chat_send_and_read_history_as_json(sim):
    # given
    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)
    bob = ok_json(sim("-p", "bob", "signup", "bob", "--password", PASSWORD, "--json"))

    # when: bob given by his local profile's name
    chat = ok_json(sim("-p", "alice", "chats", "create", "bob", "--json"))
    first = ok_json(sim("-p", "alice", "send", str(chat["id"]), "hello bob", "--json"))
    reply = ok_json(sim("-p", "bob", "send", str(chat["id"]), "hi alice", "--reply-to", str(first["id"]), "--json"))
    history = ok_json(sim("-p", "bob", "history", str(chat["id"]), "--json"))

    # then
    assert chat["type"] == "direct"
    assert {m["id"] for m in chat["members"]} == {chat["members"][0]["id"], bob["id"]}
    assert [m["content"] for m in history["results"]] == ["hello bob", "hi alice"]
    assert [m["seq"] for m in history["results"]] == [1, 2]
    assert history["results"][1]["reply_to"] == first["id"] == reply["reply_to"]
    assert history["has_more"] is False


def test_a_refusal_prints_the_server_error_in_one_line(sim):
    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)

    human = sim("-p", "alice", "chats", "show", "999999")
    machine = sim("-p", "alice", "chats", "show", "999999", "--json")

    assert human.returncode == machine.returncode == 1
    assert human.stderr == "error: GET /chats/999999/: 404 chat_not_found: Chat not found.\n"
    assert json.loads(machine.stdout) == {
        "status": 404, "error": {"code": "chat_not_found", "message": "Chat not found."},
    }


def test_a_second_process_on_a_connected_profile_says_so_instead_of_fighting_over_its_client_id(sim):
    # given: bob's phone listening
    sim("-p", "bob", "signup", "bob", "--password", PASSWORD)
    listener = subprocess.Popen([str(CHAT_SIM), "-p", "bob", "listen", "--duration", "20"],
                                env=sim.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline(), listener.stderr.read()  # connected

        # when: the README's `listen &` then `shell`, on the same profile
        second = sim("-p", "bob", "shell", timeout=10)

        # then: refused at once, plainly, and the first one is still connected
        assert second.returncode == 2
        assert "already connected in another chat-sim process" in second.stderr
        assert "chat-sim -p bob-2 login" in second.stderr
        assert listener.poll() is None
    finally:
        listener.kill()
        listener.wait()


def test_listen_prints_live_messages_in_order(sim):
    # given: bob listening
    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)
    sim("-p", "bob", "signup", "bob", "--password", PASSWORD)
    chat = ok_json(sim("-p", "alice", "chats", "create", "bob", "--json"))
    listener = subprocess.Popen([str(CHAT_SIM), "-p", "bob", "listen", "--json", "--count", "3", "--duration", "20"],
                                env=sim.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    caught_up = threading.Event()

    def read() -> None:
        for line in listener.stdout:
            lines.append(json.loads(line))
            if lines[-1]["type"] == "caught_up":
                caught_up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert caught_up.wait(15), listener.stderr.read() if listener.poll() is not None else lines

        # when
        sent = [ok_json(sim("-p", "alice", "send", str(chat["id"]), f"live {i}", "--json")) for i in range(3)]

        # then: it stops by itself after 3 messages
        assert listener.wait(20) == 0
    finally:
        listener.kill()
    reader.join(5)
    messages = [line for line in lines if line["kind"] == "message"]
    assert [m["data"] for m in messages] == sent
    assert {m["source"] for m in messages} == {"live"}
    assert [line for line in lines if line["kind"] in ("gap", "error")] == []
    assert_match_the_contract(lines)


def test_listen_catches_up_on_new_edited_and_deleted_messages_once_each(sim):
    # given: bob's first listen shows the chat's history, then he closes the app
    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)
    sim("-p", "bob", "signup", "bob", "--password", PASSWORD)
    chat = ok_json(sim("-p", "alice", "chats", "create", "bob", "--json"))
    cid = str(chat["id"])
    kept, typo, oops = (ok_json(sim("-p", "alice", "send", cid, text, "--json")) for text in ("kept", "typo", "oops"))
    first = sim("-p", "bob", "listen", "--json", "--count", "3", "--duration", "15", timeout=20)
    assert first.returncode == 0, first.stderr
    history = [json.loads(line) for line in first.stdout.splitlines()]
    assert [(i["data"]["id"], i["source"]) for i in history if i["kind"] == "message"] == [
        (kept["id"], "fetched"), (typo["id"], "fetched"), (oops["id"], "fetched"),
    ]

    # when: while he is away (his persistent session queues the events), alice sends,
    # edits and deletes
    fresh = ok_json(sim("-p", "alice", "send", cid, "fresh", "--json"))
    sim("-p", "alice", "edit", cid, str(typo["id"]), "fixed")
    sim("-p", "alice", "delete-message", cid, str(oops["id"]))
    back = sim("-p", "bob", "listen", "--json", "--duration", "2", timeout=20)

    # then: the catch-up shows each change once; the queued live copies are dropped
    assert back.returncode == 0, back.stderr
    items = [json.loads(line) for line in back.stdout.splitlines()]
    assert_match_the_contract(history + items)
    shown = [(i["kind"], i["type"], i["data"]["id"]) for i in items if i["type"].startswith("message.")]
    assert shown == [  # in the order they happened
        ("message", "message.created", fresh["id"]),
        ("event", "message.updated", typo["id"]),
        ("event", "message.updated", oops["id"]),
    ]
    changes = {i["data"]["id"]: i["data"] for i in items if i["type"].startswith("message.")}
    assert changes[fresh["id"]]["content"] == "fresh"
    assert (changes[typo["id"]]["content"], changes[typo["id"]]["deleted"]) == ("fixed", False)
    assert changes[oops["id"]]["deleted"] is True
    assert [i for i in items if i["kind"] in ("gap", "error")] == []
    caught_up = next(i for i in items if i["type"] == "caught_up")
    assert caught_up["data"] == {"fetched": 1, "updated": 2}
    # and the profile keeps the version to catch up from next time
    profile = json.loads((Path(sim.env["CHAT_SIM_HOME"]) / "profiles" / "bob.json").read_text())
    assert profile["versions"] == {cid: changes[oops["id"]]["version"]}


def test_the_shell_shows_a_chat_and_sends_what_is_typed(sim):
    # given
    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)
    sim("-p", "bob", "signup", "bob", "--password", PASSWORD)
    chat = ok_json(sim("-p", "alice", "chats", "create", "bob", "--json"))
    sim("-p", "alice", "send", str(chat["id"]), "hello bob")

    # when: bob opens the chat, answers and quits
    result = subprocess.run([str(CHAT_SIM), "-p", "bob", "shell"], env=sim.env, capture_output=True, text=True,
                            input=f"/open {chat['id']}\nhi alice\n/quit\n", timeout=30)

    # then
    assert result.returncode == 0, result.stderr
    assert "alice: hello bob" in result.stdout
    assert "bob: hi alice  ✓" in result.stdout
    history = ok_json(sim("-p", "alice", "history", str(chat["id"]), "--json"))
    assert [m["content"] for m in history["results"]] == ["hello bob", "hi alice"]


@pytest.mark.parametrize("name", ["seed004_flows", "group_roles", "background_delivery", "blocking"])
def test_shipped_scenario_passes(sim, name):
    result = sim("scenario", str(SCENARIOS / f"{name}.yaml"), timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "✗" not in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("passed")


def test_a_scenario_with_an_unmet_expectation_exits_1_at_that_step(sim, tmp_path):
    script = tmp_path / "unmet.yaml"
    script.write_text(
        "users: [alice, bob]\n"
        "steps:\n"
        "  - create_chat: {as: alice, members: [bob], save: dm}\n"
        "  - send: {as: bob, chat: dm, content: this succeeds, status: 403}\n"
        "  - send: {as: alice, chat: dm, content: never sent}\n"
    )

    result = sim("scenario", str(script))

    assert result.returncode == 1
    assert "✗  2 send" in result.stdout
    assert "expected 403, got 201" in result.stdout
    assert "never sent" not in result.stdout


def test_a_malformed_scenario_exits_2(sim, tmp_path):
    script = tmp_path / "bad.yaml"
    script.write_text("users: [alice]\nsteps:\n  - fly: {as: alice}\n")

    result = sim("scenario", str(script))

    assert result.returncode == 2
    assert "unknown action 'fly'" in result.stdout


def test_a_short_load_run_loses_duplicates_and_reorders_nothing(sim):
    result = sim("load", "--users", "6", "--chats", "3", "--rate", "20", "--duration", "3", "--grace", "10",
                 "--settle", "0.5", "--json", timeout=60)

    report = ok_json(result)
    assert report["phones"] == 6
    assert report["chats"] == 3
    assert report["errors"] == {}
    assert report["accepted"] == report["sent"] >= 50
    assert report["copies_expected"] == 2 * report["accepted"]
    assert report["copies_received"] == report["copies_expected"]
    assert (report["lost"], report["duplicated"], report["out_of_order"]) == (0, 0, 0)
    assert report["receipt_ms"]["p50"] is not None


def test_a_load_run_puts_phone_n_on_the_nth_of_its_mqtt_ports(sim, broker):
    # given: the broker's port, and one where nothing listens (a cluster node that is down)
    from tests.support.postgres import free_port

    dead = free_port()

    # when: load-0 is told the broker, load-1 the dead port (the bench spreads phones over
    # a cluster's nodes this way)
    result = sim("load", "--users", "2", "--chats", "1", "--rate", "5", "--duration", "1", "--settle", "0",
                 "--mqtt-ports", f"{broker.port},{dead}", "--phones-timeout", "3", timeout=90)

    # then: exactly one phone got on, and the run stopped before sending
    assert result.returncode == 2, result.stdout + result.stderr
    assert "only 1 of 2 phones connected and subscribed" in result.stderr
    assert "settling" not in result.stderr


def test_a_load_run_refuses_mqtt_ports_that_are_not_ports(sim):
    result = sim("load", "--users", "2", "--chats", "1", "--mqtt-ports", "1883,x")

    assert result.returncode == 2
    assert "not a comma-separated list of ports: '1883,x'" in result.stderr
