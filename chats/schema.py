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
}
IMAGE = {
    **MESSAGE, "id": 347, "seq": 3, "type": "image", "content": "the crag", "reply_to": None,
    "reply_preview": None, "client_id": None, "version": 6, "unread_count": 1, "reactions": [], "mentions": [],
    "attachment": {"url": "/chats/12/messages/347/attachment/",
                   "thumbnail_url": "/chats/12/messages/347/attachment/thumbnail/",
                   "mime": "image/jpeg", "size": 482113, "name": "crag.jpg", "width": 1600, "height": 1200},
}
SUMMARY = {**CHAT, "last_message": MESSAGE, "unread_count": 0, "mention_count": 0, "muted_until": None, "muted": False}
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
