"""How things look on the terminal: tables, message lines, events; or JSON for scripts."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chat_sim.api import Api, ApiError


def print_json(data: Any, *, file=None) -> None:
    """One JSON document per line (JSON Lines when called repeatedly)."""
    print(json.dumps(data, ensure_ascii=False, default=str), file=file or sys.stdout, flush=True)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A plain text table of `rows` with `(key, header)` columns; "(none)" when empty."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value).replace("\n", " ")
    return text if len(text) <= 48 else text[:47] + "…"


def clock(iso: str | None) -> str:
    """HH:MM:SS (UTC) of an ISO-8601 timestamp, or '--:--:--'."""
    if not iso:
        return "--:--:--"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return moment.astimezone(UTC).strftime("%H:%M:%S")


class Names:
    """User id -> username, asked of the server once per id. Thread-safe."""

    def __init__(self, api: Api, known: dict[int, str] | None = None) -> None:
        self.api = api
        self._names = dict(known or {})
        self._lock = threading.Lock()

    def learn(self, user_id: int, username: str) -> None:
        with self._lock:
            self._names[user_id] = username

    def __call__(self, user_id: int | None) -> str:
        if user_id is None:
            return "(system)"
        with self._lock:
            if user_id not in self._names:
                try:
                    self._names[user_id] = self.api.user(user_id)["username"]
                except ApiError:
                    self._names[user_id] = f"user {user_id}"
            return self._names[user_id]


def message_line(message: dict, names: Names, *, own_id: int | None = None, source: str = "") -> str:
    """`12:00:01 #3 alice: hello` with reply, attachment, edit, read and origin marks."""
    text = message.get("content", "")
    if message.get("deleted"):
        text = f"({text})"
    extras = []
    if message.get("reply_to"):
        extras.append(f"↩ {message['reply_to']}")
    attachment = message.get("attachment")
    if isinstance(attachment, dict):
        extras.append(f"[{message.get('type', 'file')}: {attachment.get('name')}, {attachment.get('size')} bytes]")
    if message.get("edited_at"):
        extras.append("edited")
    if message.get("forwarded"):
        extras.append(forwarded_text(message))
    invite = invite_text(message.get("invite"), names)
    if invite:
        extras.append(invite)
    if message.get("pinned_at"):
        extras.append("📌")
    reactions = reactions_text(message.get("reactions"))
    if reactions:
        extras.append(reactions)
    mentions = message.get("mentions") or []
    if own_id is not None and own_id in mentions:
        extras.append("@you")
    elif mentions:
        extras.append("@" + ",".join(names(m) for m in mentions))
    preview = preview_text(message.get("link_preview"))
    if preview:
        extras.append(preview)
    if own_id is not None and message.get("author") == own_id:
        # ✓ stored by the server; ✓✓ read by every other member
        extras.append("✓✓" if message.get("unread_count") == 0 else "✓")
    if source == "fetched":
        extras.append("(fetched)")
    tail = f"  {' '.join(extras)}" if extras else ""
    return (f"{clock(message.get('created_at'))} [chat {message.get('chat')} #{message.get('seq')} "
            f"id {message.get('id')}] {names(message.get('author'))}: {text}{tail}")


def preview_text(preview) -> str:
    """`[link: The crag — Routes and grades]`: a message's link preview, if it has one."""
    if not isinstance(preview, dict):
        return ""
    title = preview.get("title") or preview.get("url")
    description = preview.get("description")
    return f"[link: {title}{' — ' + description if description else ''}]"


def highlighted(snippet: str, highlights) -> str:
    """A search hit's snippet with its matches in [[ ]] (the server gives UTF-16 offsets)."""
    units = snippet.encode("utf-16-le")
    out, last = [], 0
    for start, end in highlights or []:
        out += [units[last * 2:start * 2].decode("utf-16-le", "replace"), "[[",
                units[start * 2:end * 2].decode("utf-16-le", "replace"), "]]"]
        last = end
    out.append(units[last * 2:].decode("utf-16-le", "replace"))
    return "".join(out)


def search_line(hit: dict, names: "Names") -> str:
    """`12:00:01 [chat 7 #3 id 301] alice: …see you at the [[crag]]`."""
    return (f"{clock(hit.get('created_at'))} [chat {hit.get('chat')} #{hit.get('seq')} id {hit.get('id')}] "
            f"{names(hit.get('author'))}: {highlighted(hit.get('snippet', ''), hit.get('highlights'))}")


def reactions_text(reactions) -> str:
    """`👍 3 ❤️ 1`: each emoji with its count, as the message carries them."""
    if not isinstance(reactions, list):
        return ""
    return " ".join(f"{r.get('emoji')} {r.get('count')}" for r in reactions if isinstance(r, dict))


def forwarded_text(message: dict) -> str:
    """`forwarded from alice` (the original's author; a deleted account shows as such)."""
    source = message.get("forwarded_from")
    if not isinstance(source, dict):
        return "forwarded from a deleted account"
    return f"forwarded from {source.get('display_name') or source.get('username')}"


def invite_text(invite, names: Names) -> str:
    """`[invite: Chess <https://…> until 20:00:00; ✔ 1 ✘ 0: bob accept]`, as everyone sees it."""
    if not isinstance(invite, dict):
        return ""
    link = f" <{invite['url']}>" if invite.get("url") else ""
    until = f" until {invite['expires_at']}" if invite.get("expires_at") else ""
    answers = ", ".join(f"{names(a.get('user'))} {a.get('answer')}" for a in invite.get("answers") or [])
    return (f"[invite: {invite.get('title')}{link}{until}; ✔ {invite.get('accepted', 0)} "
            f"✘ {invite.get('declined', 0)}{': ' + answers if answers else ''}]")


def event_line(kind: str, chat: int | None, data: dict, names: Names) -> str:
    """One line for a non-message event."""
    where = f"[chat {chat}] " if chat is not None else ""
    member = data.get("member") if isinstance(data.get("member"), dict) else {}
    who = member.get("username") or (names(member["id"]) if member.get("id") else "")
    by = f" by {names(data['by'])}" if data.get("by") else ""
    if kind == "member.added":
        return f"* {where}{who} joined{by}"
    if kind == "member.removed":
        if not data.get("by") or data.get("by") == member.get("id"):
            return f"* {where}{who} left"
        return f"* {where}{who} was removed{by}"
    if kind == "member.updated":
        return f"* {where}{who} is now {member.get('role')}{by}"
    if kind in ("chat.created", "chat.updated"):
        name = data.get("name") or "direct chat"
        members = ", ".join(m.get("username", "?") for m in data.get("members", []))
        verb = "new chat" if kind == "chat.created" else "chat renamed:"
        return f"* {where}{verb} {name!r} ({members})"
    if kind == "chat.deleted":
        return f"* {where}chat deleted"
    if kind == "message.updated":
        if data.get("deleted"):
            state = "deleted"
        elif data.get("edited_at"):
            state = f"edited: {data.get('content', '')}"
        else:
            state = "updated"
        reactions = reactions_text(data.get("reactions"))
        line = f"* {where}message {data.get('id')} {state}; reactions: {reactions or 'none'}"
        if data.get("pinned_at"):
            line += f"; 📌 pinned by {names(data.get('pinned_by'))}"
        invite = invite_text(data.get("invite"), names)
        if invite:
            line += f"; {invite}"
        preview = preview_text(data.get("link_preview"))
        return f"{line}; {preview}" if preview else line
    if kind == "typing.updated":
        user = data.get("user")
        who = names(user) if isinstance(user, int) else user
        if data.get("typing"):
            return f"* {where}{who} is typing… (for {data.get('expires_in')} s unless repeated)"
        return f"* {where}{who} stopped typing"
    if kind == "reaction.added":
        user = data.get("user")
        return (f"* [chat {data.get('chat')}] {names(user) if isinstance(user, int) else user} reacted "
                f"{data.get('emoji')} to your message {data.get('message')}")
    if kind == "read.updated":
        reader = data.get("user")
        marks = [f"{what} up to message {data[key]}" for what, key in
                 (("received", "last_delivered_message_id"), ("read", "last_read_message_id")) if data.get(key)]
        return f"* {where}{names(reader) if isinstance(reader, int) else reader}: {', '.join(marks) or 'nothing read yet'}"
    if kind == "mute.updated":
        chat = data.get("chat")
        until = data.get("muted_until")
        state = ("muted for good" if until and until.startswith("9999") else f"muted until {until}") \
            if data.get("muted") else "unmuted"
        return f"* chat {chat}: {state} (pushes only)"
    if kind == "chat_list.updated":
        state = "📌 pinned" if data.get("pinned") else "archived" if data.get("archived") else "in the list"
        return f"* chat {data.get('chat')}: {state} (your list only)"
    if kind == "presence.updated":
        user = data.get("id") or data.get("user")
        return f"* {names(user) if isinstance(user, int) else user} is {data.get('presence')}"
    if kind == "user.updated":
        if data.get("deleted"):
            return f"* user {data.get('id')} deleted their account"
        shown = data.get("display_name") or data.get("username")
        avatar = "an avatar" if data.get("avatar") else "no avatar"
        return f"* {data.get('username')} is now shown as {shown!r}, with {avatar}"
    if kind.startswith("friend."):
        other = data.get("username") or data.get("id") or data.get("user")
        return f"* {kind.split('.', 1)[1]}: {other}"
    return f"* {where}{kind} {json.dumps(data, ensure_ascii=False, default=str)}"


def error_line(error: ApiError) -> str:
    return f"error: {error}"
