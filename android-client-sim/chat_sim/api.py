"""The HTTP side of the phone: the contract's endpoints as methods over one keep-alive
connection, and every failure as an `ApiError` carrying the server's error envelope.

Guarantees:
- A method returns the decoded JSON body of a 2xx answer (None for 204) and raises
  `ApiError` for anything else, including "server unreachable" (status 0): callers never
  see a socket exception or a traceback-worthy surprise from here.
- A request that fails on a reused keep-alive connection (the server closes idle ones)
  is sent once more on a fresh connection. Sends always carry a `client_id`, so even a
  request that did reach the server cannot create a second message.
- Not thread-safe: one `Api` per thread (a phone has one HTTP client per task).
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from chat_sim import tls

# What a dead keep-alive connection looks like when the next request is sent on it.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class ApiError(Exception):
    """A refused or failed request: `status` (0 = no answer), and the server's envelope
    `{"error": {"code", "message", "fields"?}}` split into attributes."""

    def __init__(self, status: int, code: str, message: str, fields: dict | None = None,
                 *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.method = method
        self.path = path

    def envelope(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"status": self.status, "error": error}

    def __str__(self) -> str:
        where = f"{self.method} {self.path}: " if self.method else ""
        text = f"{where}{self.status or 'no answer'} {self.code}: {self.message}"
        for field, problems in self.fields.items():
            text += f"\n  {field}: {'; '.join(map(str, problems)) if isinstance(problems, list) else problems}"
        return text


class Api:
    """A client of one server, optionally authenticated with a device token."""

    def __init__(self, server: str, token: str | None = None, *, timeout: float = 15.0) -> None:
        parts = urlsplit(server if "://" in server else f"http://{server}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server URL: {server!r}")
        self.server = f"{parts.scheme}://{parts.netloc}"
        self.token = token
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        # The status of the last answer (201 vs 200 tells "created" from "existed").
        self.last_status = 0

    # --- transport --------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, query: dict | None = None,
                raw: bytes | None = None, content_type: str | None = None, binary: bool = False) -> Any:
        """Send one request; return the decoded 2xx body (the bytes with `binary`) or
        raise ApiError."""
        target = self._prefix + path
        if query:
            kept = {k: v for k, v in query.items() if v is not None}
            if kept:
                target += "?" + urlencode(kept)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        status, data = self._exchange(method, target, payload, headers)
        self.last_status = status
        if 200 <= status < 300:
            if binary:
                return data
            return _decode(data) if data else None
        raise _error(status, data, method=method, path=path)

    def _exchange(self, method: str, target: str, payload: bytes | None,
                  headers: dict) -> tuple[int, bytes]:
        reused = self._conn is not None
        try:
            return self._round_trip(method, target, payload, headers)
        except _STALE_CONNECTION as exc:
            self.close()
            self.last_status = 0
            if not reused:
                raise self._unreachable(exc, method, target) from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise self._unreachable(exc, method, target) from None
        # The server had closed the idle keep-alive connection: send again on a new one.
        try:
            return self._round_trip(method, target, payload, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise self._unreachable(exc, method, target) from None

    def _round_trip(self, method: str, target: str, payload: bytes | None,
                    headers: dict) -> tuple[int, bytes]:
        conn = self._connection()
        conn.request(method, target, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return response.status, data

    def pages(self, path: str, query: dict | None = None) -> list:
        """Every item of a list endpoint, following `next` links (`{count, next,
        previous, results}`); a bare list is returned as it is."""
        data = self.request("GET", path, query=query)
        if not isinstance(data, dict) or "results" not in data:
            return data
        items = list(data["results"])
        while data.get("next"):
            following = urlsplit(data["next"])
            target = following.path[len(self._prefix):] + (f"?{following.query}" if following.query else "")
            data = self.request("GET", target)
            items += data["results"]
        return items

    def _unreachable(self, exc: BaseException, method: str, target: str) -> ApiError:
        return ApiError(0, "unreachable", f"{self.server}: {exc.__class__.__name__}: {exc}",
                        method=method, path=target)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                         context=tls.context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._conn.connect()
            # Small requests and answers: without it each one may wait for a delayed ACK.
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- accounts ---------------------------------------------------------------------

    def signup(self, username: str, password: str, device_name: str = "") -> dict:
        return self.request("POST", "/accounts/signup/",
                            body={"username": username, "password": password, "device_name": device_name})

    def login(self, username: str, password: str, device_name: str = "") -> dict:
        return self.request("POST", "/accounts/login/",
                            body={"username": username, "password": password, "device_name": device_name})

    def logout(self) -> None:
        self.request("POST", "/accounts/logout/")

    def me(self) -> dict:
        return self.request("GET", "/accounts/me/")

    def settings(self, **changes: Any) -> dict:
        """Change the caller's settings (`read_receipts`, `push_previews`)."""
        return self.request("PATCH", "/accounts/me/", body=changes)

    def push_token(self, token: str | None) -> Any:
        """Register this device's FCM registration token (None: remove it)."""
        if token is None:
            return self.request("DELETE", "/accounts/me/push/")
        return self.request("PUT", "/accounts/me/push/", body={"token": token})

    def user(self, user_id: int) -> dict:
        return self.request("GET", f"/accounts/{user_id}/")

    def search_users(self, prefix: str) -> list[dict]:
        return self.pages("/accounts/", {"search": prefix})

    def friends(self, user_id: int) -> list[dict]:
        return self.pages(f"/accounts/{user_id}/friends/")

    def friend_requests(self, user_id: int) -> dict:
        return self.request("GET", f"/accounts/{user_id}/friends/requests/")

    def friend_add(self, user_id: int, friend_id: int) -> dict:
        """Ask `friend_id`, or accept its pending request (the contract uses one call)."""
        return self.request("POST", f"/accounts/{user_id}/friends/{friend_id}/")

    def friend_remove(self, user_id: int, friend_id: int) -> None:
        self.request("DELETE", f"/accounts/{user_id}/friends/{friend_id}/")

    def blocks(self, user_id: int) -> list[dict]:
        return self.pages(f"/accounts/{user_id}/blocks/")

    def block(self, user_id: int, blocked_id: int) -> Any:
        return self.request("POST", f"/accounts/{user_id}/blocks/{blocked_id}/")

    def unblock(self, user_id: int, blocked_id: int) -> None:
        self.request("DELETE", f"/accounts/{user_id}/blocks/{blocked_id}/")

    def user_chats(self, user_id: int, *, archived: bool = False) -> list[dict]:
        """One's chat list (pinned chats first), or with `archived` one's archive."""
        return self.pages(f"/accounts/{user_id}/chats/", {"archived": "true"} if archived else None)

    # --- chats and members --------------------------------------------------------------

    def chat_create(self, members: list[int], name: str = "") -> dict:
        body: dict[str, Any] = {"members": members}
        if name:
            body["name"] = name
        return self.request("POST", "/chats/", body=body)

    def chat(self, chat_id: int) -> dict:
        return self.request("GET", f"/chats/{chat_id}/")

    def chat_rename(self, chat_id: int, name: str) -> dict:
        return self.request("PATCH", f"/chats/{chat_id}/", body={"name": name})

    def chat_delete(self, chat_id: int) -> None:
        self.request("DELETE", f"/chats/{chat_id}/")

    def members(self, chat_id: int) -> list[dict]:
        return self.pages(f"/chats/{chat_id}/users/")

    def member_add(self, chat_id: int, user_id: int) -> dict:
        return self.request("POST", f"/chats/{chat_id}/users/{user_id}/")

    def member_role(self, chat_id: int, user_id: int, role: str) -> dict:
        return self.request("PATCH", f"/chats/{chat_id}/users/{user_id}/", body={"role": role})

    def member_remove(self, chat_id: int, user_id: int) -> None:
        """Leave (user_id = oneself) or kick."""
        self.request("DELETE", f"/chats/{chat_id}/users/{user_id}/")

    def read(self, chat_id: int, user_id: int, message_id: int) -> Any:
        """Move the caller's read pointer forward (never back)."""
        return self.request("PATCH", f"/chats/{chat_id}/users/{user_id}/messages/{message_id}/")

    def delivered(self, chat_id: int, user_id: int, message_id: int) -> Any:
        """Tell the server this phone received the chat up to `message_id`."""
        return self.request("PATCH", f"/chats/{chat_id}/users/{user_id}/delivered/{message_id}/")

    def sync(self, versions: dict[int, int], limit: int | None = None) -> dict:
        """What changed in every chat since the given versions: `{changed, removed, new}`."""
        body: dict[str, Any] = {"chats": {str(k): v for k, v in versions.items()}}
        if limit:
            body["limit"] = limit
        return self.request("POST", "/chats/sync/", body=body)

    # --- messages -----------------------------------------------------------------------

    def messages(self, chat_id: int, *, before: int | None = None, after: int | None = None,
                 limit: int | None = None) -> dict:
        """One page: `{results: [oldest first], has_more}`."""
        return self.request("GET", f"/chats/{chat_id}/messages/",
                            query={"before": before, "after": after, "limit": limit})

    def messages_after(self, chat_id: int, after: int, *, page: int = 200) -> list[dict]:
        """Every message newer than `after`, oldest first, following `has_more`."""
        found: list[dict] = []
        while True:
            answer = self.messages(chat_id, after=after, limit=page)
            found += answer["results"]
            if not answer["has_more"] or not answer["results"]:
                return found
            after = answer["results"][-1]["id"]

    def send(self, chat_id: int, content: str, *, reply_to: int | None = None,
             client_id: str | None = None) -> dict:
        """Post a text message. Always idempotent: without a `client_id` one is made, so
        a retry after a lost answer can never create a second message."""
        body: dict[str, Any] = {"content": content, "client_id": client_id or new_client_id()}
        if reply_to is not None:
            body["reply_to"] = reply_to
        return self.request("POST", f"/chats/{chat_id}/messages/", body=body)

    def send_file(self, chat_id: int, path: Path, *, content: str = "", reply_to: int | None = None,
                  client_id: str | None = None) -> dict:
        """Post a file (multipart, field `file`); the server sniffs its type from the bytes."""
        fields = {"client_id": client_id or new_client_id()}
        if content:
            fields["content"] = content
        if reply_to is not None:
            fields["reply_to"] = str(reply_to)
        body, content_type = _multipart(fields, "file", path)
        return self.request("POST", f"/chats/{chat_id}/messages/", raw=body, content_type=content_type)

    def search(self, q: str, *, chat: int | None = None, before: int | None = None,
               limit: int | None = None) -> dict:
        """Messages one can read matching `q`: `{results: [hits, newest first], has_more}`."""
        return self.request("GET", "/search/messages/", query={"q": q, "chat": chat, "before": before, "limit": limit})

    def react(self, chat_id: int, message_id: int, emoji: str) -> dict:
        """Add one's `emoji` to a message (idempotent); the message with its reactions."""
        return self.request("PUT", f"/chats/{chat_id}/messages/{message_id}/reactions/{quote(emoji, safe='')}/")

    def unreact(self, chat_id: int, message_id: int, emoji: str) -> None:
        self.request("DELETE", f"/chats/{chat_id}/messages/{message_id}/reactions/{quote(emoji, safe='')}/")

    def typing(self, chat_id: int, typing: bool = True) -> None:
        """Say one is typing (again every 5 s while it lasts) or stopped."""
        self.request("POST", f"/chats/{chat_id}/typing/", body={"typing": typing})

    # --- pins, forwards, invitations ---

    def chat_pin(self, chat_id: int, user_id: int, pinned: bool = True) -> dict:
        """Pin the chat first in one's own list (at most 5), or unpin it."""
        return self.request("PATCH", f"/chats/{chat_id}/users/{user_id}/", body={"pinned": pinned})

    def chat_archive(self, chat_id: int, user_id: int, archived: bool = True) -> dict:
        """Archive the chat in one's own list (until a newer message, unless muted), or not."""
        return self.request("PATCH", f"/chats/{chat_id}/users/{user_id}/", body={"archived": archived})

    def message_pin(self, chat_id: int, message_id: int) -> dict:
        return self.request("PUT", f"/chats/{chat_id}/messages/{message_id}/pin/")

    def message_unpin(self, chat_id: int, message_id: int) -> None:
        self.request("DELETE", f"/chats/{chat_id}/messages/{message_id}/pin/")

    def pins(self, chat_id: int) -> list[dict]:
        return self.request("GET", f"/chats/{chat_id}/pins/")

    def forward(self, chat_id: int, message_id: int, *, client_id: str | None = None) -> dict:
        """Forward message `message_id` (of any chat one can read) into `chat_id`."""
        return self.request("POST", f"/chats/{chat_id}/messages/",
                            body={"forward_of": message_id, "client_id": client_id or new_client_id()})

    def invite(self, chat_id: int, title: str, *, url: str | None = None, expires_at: str | None = None,
               content: str | None = None, client_id: str | None = None) -> dict:
        invite: dict[str, Any] = {"title": title}
        if url:
            invite["url"] = url
        if expires_at:
            invite["expires_at"] = expires_at
        body: dict[str, Any] = {"type": "invite", "invite": invite, "client_id": client_id or new_client_id()}
        if content:
            body["content"] = content
        return self.request("POST", f"/chats/{chat_id}/messages/", body=body)

    def answer(self, chat_id: int, message_id: int, answer: str) -> dict:
        """Accept or decline an invitation (again: changes the answer)."""
        return self.request("POST", f"/chats/{chat_id}/messages/{message_id}/answer/", body={"answer": answer})

    def message_edit(self, chat_id: int, message_id: int, content: str) -> dict:
        return self.request("PATCH", f"/chats/{chat_id}/messages/{message_id}/", body={"content": content})

    def message_delete(self, chat_id: int, message_id: int) -> dict:
        return self.request("PATCH", f"/chats/{chat_id}/messages/{message_id}/", body={"deleted": True})

    def attachment(self, chat_id: int, message_id: int, *, thumbnail: bool = False) -> bytes:
        """The bytes of a message's file (or its thumbnail)."""
        tail = "attachment/thumbnail/" if thumbnail else "attachment/"
        return self.request("GET", f"/chats/{chat_id}/messages/{message_id}/{tail}", binary=True)

    def health(self) -> dict:
        return self.request("GET", "/health/")


def new_client_id() -> str:
    return secrets.token_hex(12)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


def _error(status: int, data: bytes, *, method: str, path: str) -> ApiError:
    body = _decode(data) if data else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ApiError(status, str(error.get("code", f"http_{status}")), str(error.get("message", "")),
                        error.get("fields"), method=method, path=path)
    # Not the contract's envelope (a proxy, a crash page): keep a short excerpt.
    text = body if isinstance(body, str) else json.dumps(body) if body is not None else ""
    reason = http.client.responses.get(status, "")
    return ApiError(status, f"http_{status}", (text.strip()[:200] or reason), method=method, path=path)


def _multipart(fields: dict[str, str], file_field: str, path: Path) -> tuple[bytes, str]:
    boundary = "chat-sim-" + secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    # Only a hint, as from a phone: the server sniffs the type from the bytes.
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    filename = path.name.replace('"', "_")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
