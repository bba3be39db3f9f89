"""How the simulator shows events it has no server for (pure functions)."""

from chat_sim.output import Names, event_line


def test_user_updated_shows_the_new_name_or_the_deletion():
    names = Names(api=None, known={42: "alice"})
    alice = {"id": 42, "username": "alice", "display_name": "Alice L.", "avatar": {"url": "u", "thumbnail_url": "t"},
             "presence": "online", "last_seen": None, "deleted": False}

    assert event_line("user.updated", None, alice, names) == "* alice is now shown as 'Alice L.', with an avatar"
    deleted = {**alice, "username": "deleted-42", "display_name": "Deleted user", "avatar": None, "deleted": True}
    assert event_line("user.updated", None, deleted, names) == "* user 42 deleted their account"
