"""Examples for the API schema, shown with the operations that take or return these
shapes (alice is 42, bob 43; their group is chat 12)."""

MEMBER = {"id": 43, "username": "bob", "role": "member", "last_read_message_id": 345,
          "last_delivered_message_id": 346}
OWNER = {"id": 42, "username": "alice", "role": "owner", "last_read_message_id": 346,
         "last_delivered_message_id": 346}
CHAT = {"id": 12, "type": "group", "name": "Climbing", "created_at": "2026-11-30T18:02:11.512000Z",
        "last_seq": 2, "version": 5, "members": [OWNER, MEMBER]}
MESSAGE = {
    "id": 346, "chat": 12, "seq": 2, "author": 42, "type": "text", "content": "@bob Saturday at 10?",
    "reply_to": 345, "reply_preview": {"id": 345, "author": 43, "content": "Who's in?", "deleted": False},
    "client_id": "3f2a9c1e-6b1d-4e0a-9d55-0c8f1a2b7e41", "created_at": "2026-12-01T09:31:02.118000Z",
    "edited_at": None, "deleted": False, "version": 5, "unread_count": 0, "attachment": None,
    "reactions": [{"emoji": "👍", "count": 2, "user_ids": [43, 44]}], "mentions": [43], "link_preview": None,
    "pinned_at": None, "pinned_by": None, "forwarded": False, "forwarded_from": None, "invite": None,
}
IMAGE = {
    **MESSAGE, "id": 347, "seq": 3, "type": "image", "content": "the crag", "reply_to": None,
    "reply_preview": None, "client_id": None, "version": 6, "unread_count": 1, "reactions": [], "mentions": [],
    "attachment": {"url": "/chats/12/messages/347/attachment/",
                   "thumbnail_url": "/chats/12/messages/347/attachment/thumbnail/",
                   "mime": "image/jpeg", "size": 482113, "name": "crag.jpg", "width": 1600, "height": 1200},
}
# --- pins, forwards, invitations ---
FORWARD = {
    **IMAGE, "id": 348, "seq": 4, "author": 43, "content": "the crag", "client_id": None, "version": 7,
    "unread_count": 2, "forwarded": True,
    "forwarded_from": {"id": 42, "username": "alice", "display_name": "Alice"},
    "attachment": {**IMAGE["attachment"], "url": "/chats/12/messages/348/attachment/",
                   "thumbnail_url": "/chats/12/messages/348/attachment/thumbnail/"},
}
INVITE_INPUT = {"title": "Chess, best of three", "url": "https://play.example.org/g/8f2k",
                "expires_at": "2026-12-01T20:00:00Z"}
INVITE = {
    **MESSAGE, "id": 349, "seq": 5, "type": "invite", "content": "Chess, best of three", "reply_to": None,
    "reply_preview": None, "client_id": None, "version": 9, "reactions": [], "mentions": [],
    "pinned_at": "2026-12-01T09:40:00Z", "pinned_by": 42,
    "invite": {**INVITE_INPUT, "accepted": 1, "declined": 1, "answers": [
        {"user": 43, "answer": "accept", "at": "2026-12-01T09:35:12.004000Z"},
        {"user": 44, "answer": "decline", "at": "2026-12-01T09:36:40Z"},
    ]},
}
SUMMARY = {**CHAT, "last_message": MESSAGE, "unread_count": 0, "mention_count": 0, "muted_until": None, "muted": False,
           "pinned": True, "archived": False}
SYNC = {
    "changed": [{"id": 12, "version": 6, "messages": [IMAGE], "has_more": False, "members": [OWNER, MEMBER]}],
    "removed": [9],
    "new": [{**CHAT, "id": 15, "type": "direct", "name": "", "last_seq": 0, "version": 1}],
}
SEARCH = {
    "results": [
        {"id": 346, "chat": 12, "seq": 2, "author": 42, "type": "text", "created_at": "2026-12-01T09:31:02.118000Z",
         "edited_at": None, "snippet": "@bob Saturday at 10?", "highlights": [[5, 13]]},
        {"id": 201, "chat": 9, "seq": 40, "author": 43, "type": "image", "created_at": "2026-11-28T17:02:45.001000Z",
         "edited_at": None, "snippet": "…the crag on Saturday, bring ropes", "highlights": [[13, 21]]},
    ],
    "has_more": False,
}
