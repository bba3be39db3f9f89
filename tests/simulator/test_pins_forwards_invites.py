"""Pins, the archive, forwards and invitations through the simulator (`chat-sim` as a
subprocess) against the live stack: what `listen --json` shows, exactly, and what the
commands and the shell print."""

import subprocess

import pytest

from tests.support.sim import CHAT_SIM, PASSWORD, Listening, assert_match_the_contract, ok_json

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trio(sim):
    alice = ok_json(sim("-p", "alice", "signup", "alice", "--password", PASSWORD, "--json"))
    bob = ok_json(sim("-p", "bob", "signup", "bob", "--password", PASSWORD, "--json"))
    carol = ok_json(sim("-p", "carol", "signup", "carol", "--password", PASSWORD, "--json"))
    first = ok_json(sim("-p", "alice", "chats", "create", "bob", "--name", "first", "--json"))["id"]
    second = ok_json(sim("-p", "alice", "chats", "create", "bob", "--name", "second", "--json"))["id"]
    return alice, bob, carol, first, second


def test_a_pinned_chat_is_listed_first_with_its_marker_and_the_other_phone_is_told(sim, trio):
    # given: alice's second device listening
    alice, _, _, first, second = trio
    sim("-p", "alice-tablet", "login", "alice", "--password", PASSWORD)
    tablet = Listening(sim, "alice-tablet")
    try:
        # when
        pinned = ok_json(sim("-p", "alice", "chats", "pin", str(first), "--json"))
        sim("-p", "alice", "chats", "archive", str(second))

        # then
        assert pinned["pinned"] is True
        tablet.wait_for(lambda line: line["type"] == "chat_list.updated" and line["data"]["archived"])
    finally:
        tablet.stop()
    shown = [line for line in tablet.lines if line["type"] == "chat_list.updated"]
    assert [line["data"] for line in shown] == [
        {"chat": first, "pinned": True, "archived": False},
        {"chat": second, "pinned": False, "archived": True},
    ]
    assert_match_the_contract(tablet.lines)
    # the header, its rule, then the rows: the pinned chat first, the archived one out
    rows = sim("-p", "alice", "chats", "list").stdout.splitlines()
    assert rows[2].startswith("📌") and f" {first} " in rows[2] and len(rows) == 3
    archive = sim("-p", "alice", "chats", "list", "--archived").stdout.splitlines()
    assert archive[2].startswith("🗄") and f" {second} " in archive[2]
    too_many = [sim("-p", "alice", "chats", "pin", str(ok_json(sim("-p", "alice", "chats", "create", "bob", "--name",
                                                                    f"c{i}", "--json"))["id"])) for i in range(5)]
    assert too_many[-1].returncode == 1 and "409 too_many_pinned_chats" in too_many[-1].stderr


def test_a_forward_and_an_invitation_reach_the_phones_as_the_api_answers_them(sim, trio):
    # given: bob listening; carol in a chat with bob only
    alice, bob, carol, first, _ = trio
    elsewhere = ok_json(sim("-p", "bob", "chats", "create", "carol", "--name", "elsewhere", "--json"))["id"]
    original = ok_json(sim("-p", "alice", "send", str(first), "the crag at 10", "--json"))
    bob_phone, carol_phone = Listening(sim, "bob"), Listening(sim, "carol")
    try:
        # when: bob forwards alice's message to carol; alice invites, bob accepts, alice pins it
        forwarded = ok_json(sim("-p", "bob", "forward", str(elsewhere), str(original["id"]), "--json"))
        invite = ok_json(sim("-p", "alice", "invite", str(first), "Chess", "--url", "https://example.org/g",
                             "--json"))
        answered = ok_json(sim("-p", "bob", "answer", str(first), str(invite["id"]), "accept", "--json"))
        pinned = ok_json(sim("-p", "alice", "pin", str(first), str(invite["id"]), "--json"))

        # then
        [received] = carol_phone.wait_for(lambda line: line["kind"] == "message" and line["data"]["forwarded"])
        assert received["data"] == forwarded
        assert forwarded["forwarded_from"] == {"id": alice["id"], "username": "alice", "display_name": ""}
        updates = bob_phone.wait_for(lambda line: line["type"] == "message.updated" and line["data"]["pinned_at"])
        assert updates[0]["data"] == pinned
        assert answered["invite"]["answers"][0]["user"] == bob["id"] and pinned["invite"] == answered["invite"]
    finally:
        bob_phone.stop()
        carol_phone.stop()
    assert_match_the_contract(bob_phone.lines + carol_phone.lines)
    assert "forwarded from alice" in sim("-p", "carol", "history", str(elsewhere)).stdout
    pins = sim("-p", "bob", "pins", str(first)).stdout
    assert "[invite: Chess <https://example.org/g>; ✔ 1 ✘ 0: bob accept]" in pins and "📌" in pins
    refused = sim("-p", "alice", "answer", str(first), str(invite["id"]), "accept")
    assert refused.returncode == 1 and "409 own_invitation" in refused.stderr
    hidden = sim("-p", "carol", "forward", str(elsewhere), str(invite["id"]))
    assert hidden.returncode == 1 and "404 message_not_found" in hidden.stderr


def test_the_shell_pins_forwards_and_answers(sim, trio):
    # given: alice invited bob in one chat and said hello in the other
    alice, bob, _, first, second = trio
    invite = ok_json(sim("-p", "alice", "invite", str(first), "Chess", "--json"))
    hello = ok_json(sim("-p", "alice", "send", str(second), "hello", "--json"))

    # when
    # (opening the first chat again shows the forward from its history, whether or not its
    # live copy has come yet)
    script = (f"/open {first}\n/pinchat\n/accept {invite['id']}\n/open {second}\n/forward {hello['id']} {first}\n"
              f"/open {first}\n/chats\n/quit\n")
    result = subprocess.run([str(CHAT_SIM), "-p", "bob", "shell"], env=sim.env, capture_output=True, text=True,
                            input=script, timeout=30)

    # then
    assert result.returncode == 0, result.stderr
    assert "alice: Chess  [invite: Chess; ✔ 0 ✘ 0]" in result.stdout
    assert f"message {invite['id']}: [invite: Chess; ✔ 1 ✘ 0: bob accept]" in result.stdout
    assert "bob: hello  forwarded from alice" in result.stdout
    table = result.stdout[result.stdout.rindex("ID"):].splitlines()
    assert table[2].lstrip().startswith("📌") and f" {first} " in table[2]
    assert "? " not in result.stdout and "error" not in result.stdout
