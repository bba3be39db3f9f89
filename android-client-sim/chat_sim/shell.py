"""`chat-sim shell`: a minimal chat app in the terminal, line by line.

Type text to send it to the open chat; commands start with `/` (`/help` lists them).
Everything that arrives (messages of every chat, member changes, read marks, presence)
is printed as it comes, by the same `Listener` as `chat-sim listen`, so the shell also
catches up over HTTP after every reconnect. Own messages show ✓ once stored by the
server and ✓✓ once every other member has read them; reactions show as `👍 2`, a
message that mentions you as `@you`, and the open chat's "… alice is typing" as it
comes (the shell says "typing" itself with `/typing`, as an app does on keystrokes).
Pinned chats come first in `/chats` with 📌, pinned messages carry 📌, a forward says
"forwarded from alice", and an invitation shows its title, link and answers.
"""

from __future__ import annotations

import shlex
import sys
import threading
from pathlib import Path

from chat_sim import output
from chat_sim.api import Api, ApiError
from chat_sim.mqtt import Item, Listener
from chat_sim.output import Names, table
from chat_sim.profiles import Profile, ProfileStore

HELP = """\
  TEXT                 send TEXT to the open chat
  /chats               your chats, with unread counts
  /open CHAT           open a chat: its last messages, marked read
  /new USER... [-n NAME]  start a direct chat (one user) or a group
  /history [N]         N older messages of the open chat (default 20)
  /reply ID TEXT       reply to message ID
  /file PATH [TEXT]    send a file
  /edit ID TEXT        edit your message;  /unsend ID  delete it
  /react ID EMOJI      react to message ID (👍 👎 ❤️ 😂 😮 😢 🙏 🔥 🎉);  /unreact ID EMOJI
  /typing [off]        say you are typing in the open chat (or stopped)
  /pin ID, /unpin ID   pin a message of the open chat (admins, owner);  /pins  its pins
  /forward ID CHAT     forward message ID (of the open chat) into CHAT
  /invite TITLE [URL]  send an invitation;  /accept ID, /decline ID  answer one
  /pinchat [off]       pin the open chat first in your list (or unpin)
  /archive [off]       archive the open chat (or bring it back);  /archived  your archive
  /members             members, roles and read pointers
  /add USER, /kick USER, /role USER ROLE, /leave
  /read                mark the open chat read up to its newest message
  /who USER            a user's presence and last seen
  /quit                leave (Ctrl-D too)"""


class Shell:
    def __init__(self, store: ProfileStore, profile: Profile, *, chat_id: int | None = None) -> None:
        self.store = store
        self.profile = profile
        self.me = profile.user_id
        self.api = Api(profile.server, profile.token)
        self.names = Names(Api(profile.server, profile.token), {profile.user_id: profile.username})
        self.chat: int | None = None
        self.oldest: int | None = None  # oldest message id shown of the open chat
        self.printed: set[int] = set()  # message ids already on screen
        self.auto_read = True
        self._out = threading.Lock()
        self.listener = Listener(Api(profile.server, profile.token), user_id=profile.user_id,
                                 mqtt=profile.mqtt, on_item=self._on_item,
                                 cursors={int(k): v for k, v in profile.cursors.items()},
                                 versions={int(k): v for k, v in profile.versions.items()}, typing=True)
        self.first_chat = chat_id

    # --- output -------------------------------------------------------------------------

    def say(self, text: str) -> None:
        # Under prompt_toolkit's patch_stdout (a terminal), what is printed goes above the
        # input line, which stays as typed.
        with self._out:
            print(text, flush=True)

    def _show_message(self, message: dict, source: str = "") -> None:
        if message["id"] in self.printed:
            return
        self.printed.add(message["id"])
        line = output.message_line(message, self.names, own_id=self.me, source=source)
        self.say(line if message["chat"] == self.chat else f"  (chat {message['chat']}) {line}")

    def _on_item(self, item: Item) -> None:
        if item.kind == "message":
            self._show_message(item.data, item.source)
            if item.chat == self.chat and item.data.get("author") != self.me:
                self._mark_read(item.data["id"], api=self.listener.api)
        elif item.kind == "event" and item.type == "read.updated" and item.chat == self.chat:
            self._show_read(item.data)
        elif item.kind == "event" and item.type == "typing.updated":
            if item.chat == self.chat:  # only the open chat's, as an app shows it
                who = self.names(item.data.get("user"))
                self.say(f"  … {who} is typing" if item.data.get("typing") else f"  … {who} stopped typing")
        elif item.kind == "event":
            self.say(output.event_line(item.type, item.chat, item.data, self.names))
        elif item.kind == "gap":
            self.say(f"! chat {item.chat}: {item.data['missing']} message(s) missed live, fetched over HTTP")
        elif item.type == "disconnected":
            self.say("~ connection lost; reconnecting")
        elif item.type == "login_cooldown":
            self.say(f"~ the broker refuses this device for now; trying again in {item.data['retry_in']:g} s")
        elif item.type == "caught_up" and item.data["fetched"]:
            self.say(f"~ caught up: {item.data['fetched']} message(s) fetched")
        elif item.kind == "error":
            self.say(f"! {item.type}: {item.data}")

    def _show_read(self, pointers: dict) -> None:
        """Another member's marks in the open chat, as the app shows them: ✓✓ up to a message."""
        reader = pointers.get("user")
        if reader == self.me:
            return
        who = self.names(reader) if isinstance(reader, int) else reader
        if pointers.get("last_read_message_id"):
            self.say(f"  ✓✓ {who} read up to message {pointers['last_read_message_id']}")
        elif pointers.get("last_delivered_message_id"):
            self.say(f"  ✓ {who} received up to message {pointers['last_delivered_message_id']}")

    def _mark_read(self, message_id: int, *, api: Api) -> None:
        if not self.auto_read or self.chat is None:
            return
        try:
            api.read(self.chat, self.me, message_id)
        except ApiError as exc:
            # Said once: the app keeps working without read marks.
            self.auto_read = False
            self.say(f"(read marks off: {exc})")

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        self.say(f"signed in as {self.profile.username} on {self.profile.server}; /help for commands")
        self.listener.start()
        if not self.listener.wait_ready(15):
            self.say("~ not connected to the broker yet; messages will come once it is")
        try:
            if self.first_chat is not None:
                self.handle(f"/open {self.first_chat}")
            else:
                self.handle("/chats")
            read_line = self._terminal_reader() if sys.stdin.isatty() else (lambda: input())
            while True:
                try:
                    line = read_line()
                except EOFError:
                    break
                if line.strip() in ("/quit", "/q", "/exit"):
                    break
                self.handle(line)
        except KeyboardInterrupt:
            pass
        finally:
            self.listener.stop()
            self.profile.cursors = {str(k): v for k, v in self.listener.shown_cursors().items()}
            self.profile.versions = {str(k): v for k, v in self.listener.shown_versions().items()}
            self.store.save(self.profile)
        return 0

    def _terminal_reader(self):
        """A line reader that keeps what is being typed intact while messages arrive
        (prompt_toolkit: arriving lines are printed above the prompt)."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession = PromptSession()

        def read() -> str:
            with patch_stdout(raw=True):
                return session.prompt(f"chat {self.chat}> " if self.chat else "> ")

        return read

    def handle(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            if line.startswith("/"):
                self.command(line)
            else:
                self.send(line)
        except ApiError as exc:
            self.say(output.error_line(exc))
        except (ValueError, IndexError, OSError) as exc:
            self.say(f"? {exc} (/help)")

    def send(self, text: str, *, reply_to: int | None = None, file: Path | None = None) -> None:
        if self.chat is None:
            self.say("? open a chat first: /chats, /open CHAT")
            return
        if file is not None:
            message = self.api.send_file(self.chat, file, content=text, reply_to=reply_to)
        else:
            message = self.api.send(self.chat, text, reply_to=reply_to)
        self._show_message(message)

    def command(self, line: str) -> None:
        name, *args = shlex.split(line)
        name = name[1:]
        if name == "help":
            self.say(HELP)
        elif name == "chats":
            self.say(self._chats_table())
        elif name == "open":
            self.open(int(args[0]))
        elif name == "new":
            self.new_chat(args)
        elif name == "history":
            self.history(int(args[0]) if args else 20)
        elif name == "reply":
            self.send(" ".join(args[1:]), reply_to=int(args[0]))
        elif name == "file":
            self.send(" ".join(args[1:]), file=Path(args[0]))
        elif name == "edit":
            self.api.message_edit(self._open_chat(), int(args[0]), " ".join(args[1:]))
        elif name == "unsend":
            self.api.message_delete(self._open_chat(), int(args[0]))
        elif name == "react":
            message = self.api.react(self._open_chat(), int(args[0]), args[1])
            self.say(f"  message {message['id']}: {output.reactions_text(message['reactions'])}")
        elif name == "unreact":
            self.api.unreact(self._open_chat(), int(args[0]), args[1])
        elif name == "typing":
            self.api.typing(self._open_chat(), not (args and args[0] == "off"))
        # pins, forwards, invitations
        elif name in ("pin", "unpin"):
            if name == "pin":
                self.api.message_pin(self._open_chat(), int(args[0]))
            else:
                self.api.message_unpin(self._open_chat(), int(args[0]))
            self.say(f"  message {args[0]} {name}ned")
        elif name == "pins":
            pins = self.api.pins(self._open_chat())
            for message in pins:
                self.say(output.message_line(message, self.names, own_id=self.me))
            if not pins:
                self.say("  (no pinned messages)")
        elif name == "forward":
            sent = self.api.forward(int(args[1]), int(args[0]))
            self.say(f"  forwarded to chat {sent['chat']} as message {sent['id']}")
        elif name == "invite":
            url = args[-1] if len(args) > 1 and args[-1].startswith(("http://", "https://")) else None
            title = " ".join(args[:-1] if url else args)
            self.api.invite(self._open_chat(), title, url=url)
        elif name in ("accept", "decline"):
            message = self.api.answer(self._open_chat(), int(args[0]), name)
            self.say(f"  message {message['id']}: {output.invite_text(message['invite'], self.names)}")
        elif name == "pinchat":
            member = self.api.chat_pin(self._open_chat(), self.me, not (args and args[0] == "off"))
            self.say(f"  chat {self.chat}: {'pinned' if member.get('pinned') else 'unpinned'}")
        elif name == "archive":
            member = self.api.chat_archive(self._open_chat(), self.me, not (args and args[0] == "off"))
            self.say(f"  chat {self.chat}: {'archived' if member.get('archived') else 'back in the list'}")
        elif name == "archived":
            self.say(self._chats_table(archived=True))
        elif name == "members":
            self.say(table(self.api.members(self._open_chat()),
                           [("id", "ID"), ("username", "USERNAME"), ("role", "ROLE"),
                            ("last_read_message_id", "LAST READ")]))
        elif name == "add":
            self.api.member_add(self._open_chat(), self.user(args[0]))
        elif name == "kick":
            self.api.member_remove(self._open_chat(), self.user(args[0]))
        elif name == "role":
            self.api.member_role(self._open_chat(), self.user(args[0]), args[1])
        elif name == "leave":
            self.api.member_remove(self._open_chat(), self.me)
            self.chat = None
        elif name == "read":
            newest = self.api.messages(self._open_chat(), limit=1)["results"]
            if newest:
                self.auto_read = True
                self._mark_read(newest[-1]["id"], api=self.api)
        elif name == "who":
            user = self.api.user(self.user(args[0]))
            self.say(f"{user['username']}: {user.get('presence')} (last seen {user.get('last_seen') or '-'})")
        else:
            self.say(f"? unknown command /{name} (/help)")

    # --- actions ------------------------------------------------------------------------

    def _open_chat(self) -> int:
        if self.chat is None:
            raise ValueError("no chat open")
        return self.chat

    def user(self, ref: str) -> int:
        ref = ref.lstrip("@")
        if ref.isdigit():
            return int(ref)
        for user in self.api.search_users(ref):
            if user.get("username") == ref:
                self.names.learn(user["id"], ref)
                return user["id"]
        raise ValueError(f"no user named {ref!r}")

    def _chats_table(self, *, archived: bool = False) -> str:
        rows = [{
            # pinned chats come first (the server's order), marked 📌
            "pin": "📌" if c.get("pinned") else "",
            "id": c["id"], "name": c.get("name") or "(direct)",
            "members": ", ".join(m.get("username", "?") for m in c.get("members", []) if m.get("id") != self.me),
            "unread": c.get("unread_count"), "last": (c.get("last_message") or {}).get("content"),
        } for c in self.api.user_chats(self.me, archived=archived)]
        if archived and not rows:
            return "  (no archived chats)"
        return table(rows, [("pin", ""), ("id", "ID"), ("name", "NAME"), ("members", "WITH"), ("unread", "UNREAD"),
                            ("last", "LAST MESSAGE")])

    def open(self, chat_id: int) -> None:
        chat = self.api.chat(chat_id)
        for member in chat.get("members", []):
            self.names.learn(member["id"], member["username"])
        self.chat = chat_id
        others = ", ".join(m["username"] for m in chat.get("members", []) if m["id"] != self.me)
        self.say(f"--- chat {chat_id}: {chat.get('name') or 'direct'} with {others}")
        page = self.api.messages(chat_id, limit=20)
        self.oldest = page["results"][0]["id"] if page["results"] else None
        for message in page["results"]:
            self.printed.discard(message["id"])
            self._show_message(message)
        if page["results"]:
            self._mark_read(page["results"][-1]["id"], api=self.api)

    def history(self, count: int) -> None:
        chat_id = self._open_chat()
        if self.oldest is None:
            self.say("(no older messages)")
            return
        page = self.api.messages(chat_id, before=self.oldest, limit=count)
        if not page["results"]:
            self.say("(no older messages)")
            return
        self.oldest = page["results"][0]["id"]
        for message in page["results"]:
            self.printed.discard(message["id"])
            self._show_message(message)

    def new_chat(self, args: list[str]) -> None:
        name = ""
        if "-n" in args:
            i = args.index("-n")
            name = " ".join(args[i + 1:])
            args = args[:i]
        chat = self.api.chat_create([self.user(a) for a in args], name)
        self.open(chat["id"])
