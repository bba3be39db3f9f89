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
