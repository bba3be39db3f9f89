"""Typing, reactions, mentions, search and link previews through the simulator (`chat-sim` as a subprocess)
against the live stack: what `listen --json` shows, exactly, and what it prints."""

import subprocess
import sys
import time

import pytest

from tests.support.sim import CHAT_SIM, PASSWORD, Listening, assert_match_the_contract, ok_json

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trio(sim):
    alice = ok_json(sim("-p", "alice", "signup", "alice", "--password", PASSWORD, "--json"))
    bob = ok_json(sim("-p", "bob", "signup", "bob", "--password", PASSWORD, "--json"))
    carol = ok_json(sim("-p", "carol", "signup", "carol", "--password", PASSWORD, "--json"))
    chat = ok_json(sim("-p", "alice", "chats", "create", "bob", "--json"))
    return alice, bob, carol, chat["id"]


def test_listen_shows_another_member_typing_within_a_second_and_an_outsider_nothing(sim, trio):
    # given: bob and carol (not in the chat) listening
    alice, bob, carol, cid = trio
    bob_phone, carol_phone = Listening(sim, "bob"), Listening(sim, "carol")
    try:
        # when
        started = time.monotonic()
        said = ok_json(sim("-p", "alice", "typing", str(cid), "--json"))

        # then
        [shown] = bob_phone.wait_for(lambda line: line["type"] == "typing.updated", timeout=3)
        assert time.monotonic() - started < 3  # a subprocess start included
        assert said == {"chat": cid, "typing": True}
        assert (shown["kind"], shown["chat"], shown["data"]) == (
            "event", cid, {"user": alice["id"], "typing": True, "expires_in": 8}
        )
        # alice stops: bob sees it once its second is up
        sim("-p", "alice", "typing", str(cid), "--stop")
        bob_phone.wait_for(lambda line: line["type"] == "typing.updated" and not line["data"]["typing"], timeout=3)
        time.sleep(0.3)
    finally:
        bob_phone.stop()
        carol_phone.stop()
    assert [line for line in carol_phone.lines if line["type"] == "typing.updated"] == []
    assert any(line["type"] == "caught_up" for line in carol_phone.lines)
    refused = sim("-p", "carol", "typing", str(cid))
    assert refused.returncode == 1 and "404 chat_not_found" in refused.stderr


def test_listen_shows_a_mention_and_the_reactions_with_their_exact_payloads(sim, trio):
    # given: both phones listening
    alice, bob, _, cid = trio
    alice_phone, bob_phone = Listening(sim, "alice"), Listening(sim, "bob")
    try:
        # when: alice mentions bob, bob reacts
        sent = ok_json(sim("-p", "alice", "send", str(cid), "@bob look", "--json"))
        reacted = ok_json(sim("-p", "bob", "react", str(cid), str(sent["id"]), "👍", "--json"))

        # then: bob's phone has the message with its mention
        [message] = bob_phone.wait_for(lambda line: line["kind"] == "message")
        assert message["data"] == sent and sent["mentions"] == [bob["id"]]
        # alice's: the message's new reactions, and that bob reacted to her message
        [updated] = alice_phone.wait_for(lambda line: line["type"] == "message.updated")
        [told] = alice_phone.wait_for(lambda line: line["type"] == "reaction.added")
        assert updated["data"] == reacted
        assert reacted["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [bob["id"]]}]
        assert told["data"] == {"chat": cid, "message": sent["id"], "user": bob["id"], "emoji": "👍"}
        # bob takes it back: everyone's copy loses it
        sim("-p", "bob", "react", str(cid), str(sent["id"]), "👍", "--remove")
        alice_phone.wait_for(lambda line: line["type"] == "message.updated" and line["data"]["reactions"] == [])
    finally:
        alice_phone.stop()
        bob_phone.stop()
    assert_match_the_contract(alice_phone.lines + bob_phone.lines)
    # bob's phone received it (delivered) but he has not read it: one unread mention
    [chat] = [c for c in ok_json(sim("-p", "bob", "chats", "list", "--json")) if c["id"] == cid]
    assert chat["mention_count"] == 1
    assert "@" in sim("-p", "bob", "chats", "list").stdout.splitlines()[0]
    bad = sim("-p", "bob", "react", str(cid), str(sent["id"]), "🦄")
    assert bad.returncode == 1 and "400 validation_error" in bad.stderr


def test_the_shell_shows_typing_reactions_and_mentions(sim, trio):
    # given: alice mentioned bob and reacted to her own message
    alice, bob, _, cid = trio
    sent = ok_json(sim("-p", "alice", "send", str(cid), "@bob look", "--json"))
    sim("-p", "alice", "react", str(cid), str(sent["id"]), "🔥")

    # when: bob opens the chat, reacts and says he types
    result = subprocess.run([str(CHAT_SIM), "-p", "bob", "shell"], env=sim.env, capture_output=True, text=True,
                            input=f"/open {cid}\n/react {sent['id']} 👍\n/typing\n/typing off\n/quit\n", timeout=30)

    # then
    assert result.returncode == 0, result.stderr
    assert "alice: @bob look  🔥 1 @you" in result.stdout
    assert f"message {sent['id']}: 🔥 1 👍 1" in result.stdout
    assert "? " not in result.stdout and "error" not in result.stdout


# --- search and link previews ------------------------------------------------------------


def test_search_prints_the_hits_newest_first_with_their_matches(sim, trio):
    # given
    alice, bob, carol, cid = trio
    for text in ("주말에 친구들과 등산", "On se retrouve au café ?", "climbing at the crag", "nothing"):
        ok_json(sim("-p", "alice", "send", str(cid), text, "--json"))

    # when
    found = ok_json(sim("-p", "bob", "search", "친구", "--json"))
    printed = sim("-p", "bob", "search", "c")
    outsider = ok_json(sim("-p", "carol", "search", "climbing", "--json"))
    refused = sim("-p", "bob", "search", " ")

    # then
    assert [hit["snippet"] for hit in found["results"]] == ["주말에 친구들과 등산"]
    assert found["results"][0]["highlights"] == [[4, 6]] and found["has_more"] is False
    lines = printed.stdout.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "alice: [[c]]limbing at the [[c]]rag", "alice: On se retrouve au [[c]]afé ?"]
    assert outsider == {"results": [], "has_more": False}
    assert refused.returncode == 1 and "400 validation_error" in refused.stderr


@pytest.fixture
def previews(live_stack, test_database_url, tmp_path):
    """A real `manage.py worker previews` for this test (allowed to fetch the local page)."""
    from tests.support.stack import ServerProcess, server_env

    env = {**server_env(database_url=test_database_url, broker=live_stack.broker, data_dir=tmp_path),
           "LINK_PREVIEW_ALLOW_PRIVATE": "on"}
    process = ServerProcess("previews", [sys.executable, "manage.py", "worker", "previews"], env, tmp_path).start()
    yield process
    process.stop()


def test_listen_shows_a_link_s_preview(sim, trio, previews):
    from tests.chats.test_previews import Site

    alice, bob, _, cid = trio
    site = Site()
    bob_phone = Listening(sim, "bob")
    try:
        # when
        url = site.url("/page")
        sent = ok_json(sim("-p", "alice", "send", str(cid), f"look {url}", "--json"))

        # then: the message, then its update with the preview
        [updated] = bob_phone.wait_for(lambda line: line["type"] == "message.updated", timeout=15)
        assert updated["data"]["id"] == sent["id"]
        assert updated["data"]["link_preview"] == {
            "url": url, "title": "The crag & its routes", "description": "Grades, approach and topo.",
            "image": site.url("/img/crag.jpg")}
        history = sim("-p", "bob", "history", str(cid)).stdout
        assert "[link: The crag & its routes — Grades, approach and topo.]" in history
    finally:
        bob_phone.stop()
        site.stop()
    assert_match_the_contract(bob_phone.lines)
