"""What `listen` and the shell print for events (pure functions of chat_sim.output)."""

from chat_sim import output


def names(user_id):
    return {5: "bob"}.get(user_id, f"user {user_id}")


def test_read_marks_show_only_what_is_set():
    line = output.event_line("read.updated", 7, {"user": 5, "last_delivered_message_id": 12,
                                                 "last_read_message_id": None}, names)
    nothing = output.event_line("read.updated", 7, {"user": 5, "last_delivered_message_id": None,
                                                    "last_read_message_id": None}, names)

    assert "None" not in line and "received up to message 12" in line
    assert nothing.endswith("bob: nothing read yet")


def test_mute_shows_until_when_and_forever():
    until = output.event_line("mute.updated", None, {"chat": 7, "muted_until": "2030-01-01T00:00:00Z",
                                                     "muted": True}, names)
    forever = output.event_line("mute.updated", None, {"chat": 7, "muted_until": "9999-12-31T23:59:59Z",
                                                       "muted": True}, names)
    unmuted = output.event_line("mute.updated", None, {"chat": 7, "muted_until": None, "muted": False}, names)

    assert until == "* chat 7: muted until 2030-01-01T00:00:00Z (pushes only)"
    assert forever == "* chat 7: muted for good (pushes only)"
    assert unmuted == "* chat 7: unmuted (pushes only)"


def test_typing_reactions_and_mentions_read_as_a_user_would_see_them():
    typing = output.event_line("typing.updated", 7, {"user": 5, "typing": True, "expires_in": 8}, names)
    stopped = output.event_line("typing.updated", 7, {"user": 5, "typing": False, "expires_in": 0}, names)
    told = output.event_line("reaction.added", None, {"chat": 7, "message": 30, "user": 5, "emoji": "👍"}, names)
    updated = output.event_line("message.updated", 7, {"id": 30, "edited_at": None, "deleted": False,
                                                       "reactions": [{"emoji": "👍", "count": 2, "user_ids": [5, 6]}]},
                                names)
    message = {"id": 30, "chat": 7, "seq": 1, "author": 5, "content": "@me hi", "created_at": None,
               "reactions": [{"emoji": "🔥", "count": 1, "user_ids": [6]}], "mentions": [6]}

    assert typing == "* [chat 7] bob is typing… (for 8 s unless repeated)"
    assert stopped == "* [chat 7] bob stopped typing"
    assert told == "* [chat 7] bob reacted 👍 to your message 30"
    assert updated == "* [chat 7] message 30 updated; reactions: 👍 2"
    assert output.message_line(message, names, own_id=6).endswith("bob: @me hi  🔥 1 @you")
    assert output.message_line(message, names, own_id=5).endswith("bob: @me hi  🔥 1 @user 6 ✓")


def test_pins_forwards_and_invitations_read_as_a_user_would_see_them():
    pinned = output.event_line("chat_list.updated", None, {"chat": 7, "pinned": True, "archived": False}, names)
    archived = output.event_line("chat_list.updated", None, {"chat": 7, "pinned": False, "archived": True}, names)
    back = output.event_line("chat_list.updated", None, {"chat": 7, "pinned": False, "archived": False}, names)
    invite = {"title": "Chess", "url": "https://example.org/g", "expires_at": None, "accepted": 1, "declined": 0,
              "answers": [{"user": 5, "answer": "accept", "at": "2026-01-01T12:00:00Z"}]}
    answered = output.event_line("message.updated", 7, {"id": 30, "edited_at": None, "deleted": False,
                                                        "reactions": [], "pinned_at": "2026-01-01T12:00:00Z",
                                                        "pinned_by": 5, "invite": invite}, names)
    forward = {"id": 31, "chat": 7, "seq": 2, "author": 6, "content": "hi", "created_at": None,
               "forwarded": True, "forwarded_from": {"id": 5, "username": "bob", "display_name": ""}}
    orphan = {**forward, "forwarded_from": None}

    assert pinned == "* chat 7: 📌 pinned (your list only)"
    assert archived == "* chat 7: archived (your list only)"
    assert back == "* chat 7: in the list (your list only)"
    assert answered == ("* [chat 7] message 30 updated; reactions: none; 📌 pinned by bob; "
                        "[invite: Chess <https://example.org/g>; ✔ 1 ✘ 0: bob accept]")
    assert output.message_line(forward, names).endswith("user 6: hi  forwarded from bob")
    assert output.message_line(orphan, names).endswith("user 6: hi  forwarded from a deleted account")
