"""The send scenario of tests/chats/test_sqlite.py, run in a child process on SQLite.

    DATA_DIR=<empty dir> python -m tests.support.sqlite_send

With no DATABASE_URL the settings choose the zero-setup default, a SQLite file under
DATA_DIR. This migrates it, sends over HTTP (Django's test client) as the suite does,
and prints what it saw as JSON for the test to assert on.
"""

import json

import django


def main() -> None:
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from chats.models import Chat, Membership
    from chatserver.models import OutboxEvent
    from tests.support.factories import make_user

    call_command("migrate", verbosity=0)
    alice, bob, carol, mallory = (make_user() for _ in range(4))

    def post(user, path: str, body: dict | None = None) -> list:
        response = user.client.post(path, body, format="json")
        return [response.status_code, response.json()]

    cid = post(alice, "/chats/", {"members": [bob.id, carol.id], "name": "g"})[1]["id"]
    Membership.objects.filter(chat_id=cid, user_id=carol.id).update(role="restricted")
    direct = post(alice, "/chats/", {"members": [mallory.id]})[1]["id"]
    post(mallory, f"/accounts/{mallory.id}/blocks/{alice.id}/")
    messages = f"/chats/{cid}/messages/"
    sent = post(alice, messages, {"content": "hi", "client_id": "k"})
    seen = {
        "vendor": connection.vendor,
        "ids": {"alice": alice.id, "bob": bob.id, "carol": carol.id, "chat": cid},
        "sent": sent,
        "retried": post(alice, messages, {"content": "hi again", "client_id": "k"}),
        "reply": post(bob, messages, {"content": "re", "reply_to": sent[1]["id"]}),
        "restricted": post(carol, messages, {"content": "hi"}),
        "outsider": post(mallory, messages, {"content": "hi"}),
        "blocked": post(alice, f"/chats/{direct}/messages/", {"content": "hi"}),
    }
    pointer = Membership.objects.get(chat_id=cid, user_id=alice.id)
    seen["alice_pointers"] = [
        pointer.last_read_seq, pointer.last_read_message_id,
        pointer.last_delivered_seq, pointer.last_delivered_message_id,
    ]
    seen["last_seq"] = Chat.objects.get(id=cid).last_seq
    seen["events"] = [
        {"payload": json.loads(e.payload), "user_ids": sorted(e.user_ids), "chat_id": e.chat_id}
        for e in OutboxEvent.objects.order_by("id")
        if '"message.created"' in e.payload
    ]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
