"""Writes, one module per family of actions (reads are in `chats.selectors`):

    common        the chat's row lock, roles' ranks, `chat_event` (every chat event, its version)
    chats         create, rename, delete / hide
    members       add, remove (leave, kick), change roles
    message_send  the send (SQL in `chats.send_sql`)
    message_edit  edit, soft delete
    pointers      read and delivered pointers

Services take the acting user as `actor` (a User), other users and rows by id, and return
models; the API shapes of those are built by `chats.shapes`.
"""
