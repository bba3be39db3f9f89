"""`chat-sim`: the Android app on the command line.

Every API operation is a subcommand; `listen`, `shell`, `scenario` and `load` act like
one or many phones. Global options (`--home`, `--profile`, `--server`, `--json`) go
before or after the subcommand. Exit status: 0 done, 1 refused by the server or an
unmet expectation, 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from chat_sim import output, tls
from chat_sim.api import Api, ApiError
from chat_sim.mqtt import Item, Listener
from chat_sim.output import Names, print_json, table
from chat_sim.profiles import DEFAULT_SERVER, Profile, ProfileBusy, ProfileStore, home_dir

# An app says "typing" again this often while the user types (the server's docs: 5 s).
TYPING_RESEND = 5.0
ROLES = ("owner", "admin", "member", "restricted")


class UsageError(Exception):
    """Bad arguments or state (not signed in, unknown user): exit status 2."""


class Context:
    """What every command needs: the profile, the server, the output mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = args.json
        self.store = ProfileStore(home_dir(args.home))
        self.profile: Profile = self.store.load(args.profile)
        self.server = (args.server or (self.profile.server if self.profile.signed_in else None)
                       or os.environ.get("CHAT_SIM_SERVER") or DEFAULT_SERVER)

    def api(self, *, auth: bool = True) -> Api:
        if auth:
            self.require_session()
            return Api(self.profile.server, self.profile.token)
        return Api(self.server)

    def require_session(self) -> Profile:
        if not self.profile.signed_in:
            raise UsageError(f"profile {self.profile.name!r} is not signed in: run `chat-sim "
                             f"--profile {self.profile.name} login USERNAME` (or signup)")
        return self.profile

    @property
    def me(self) -> int:
        return self.require_session().user_id

    def user_id(self, api: Api, ref: str) -> int:
        """A user given as an id, as the name of a local profile, or as a username the
        server's search finds exactly."""
        ref = ref.lstrip("@")
        if ref.isdigit():
            return int(ref)
        if self.store.exists(ref):
            other = self.store.load(ref)
            if other.signed_in and other.server == self.profile.server:
                return other.user_id
        for user in api.search_users(ref):
            if user.get("username") == ref:
                return user["id"]
        raise UsageError(f"no user {ref!r} (give an id, a local profile name, or an exact username)")

    def show(self, data, human) -> None:
        """JSON as the server sent it, or the human rendering."""
        if self.json:
            print_json(data)
        else:
            text = human(data) if callable(human) else human
            if text:
                print(text)


# --- accounts -------------------------------------------------------------------------


def _password(args: argparse.Namespace) -> str:
    if args.password:
        return args.password
    if os.environ.get("CHAT_SIM_PASSWORD"):
        return os.environ["CHAT_SIM_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    raise UsageError("give --password (or CHAT_SIM_PASSWORD)")


def _session_command(ctx: Context, args: argparse.Namespace, call: str) -> None:
    api = ctx.api(auth=False)
    session = getattr(api, call)(args.username, _password(args), args.device)
    ctx.profile.adopt_session(session, api.server)
    ctx.profile.device_name = args.device
    ctx.store.save(ctx.profile)
    ctx.show(session, f"signed in as {session['username']} (id {session['id']}) on {api.server}; "
                      f"profile {ctx.profile.name!r}")


def cmd_signup(ctx: Context, args: argparse.Namespace) -> None:
    _session_command(ctx, args, "signup")


def cmd_login(ctx: Context, args: argparse.Namespace) -> None:
    _session_command(ctx, args, "login")


def cmd_logout(ctx: Context, args: argparse.Namespace) -> None:
    ctx.api().logout()
    ctx.profile.forget_session()
    ctx.store.save(ctx.profile)
    ctx.show({"logged_out": True}, f"logged out; profile {ctx.profile.name!r} kept without a session")


def cmd_me(ctx: Context, args: argparse.Namespace) -> None:
    me = ctx.api().me()
    ctx.show(me, lambda d: "\n".join([
        f"id        {d['id']}", f"username  {d['username']}", f"server    {ctx.profile.server}",
        f"mqtt      {d['mqtt']['host']}:{d['mqtt']['port']} as {d['mqtt']['username']} "
        f"(client id {d['mqtt']['client_id']}, topic {d['mqtt']['user_topic']})",
    ]))


def cmd_profiles(ctx: Context, args: argparse.Namespace) -> None:
    rows = []
    for name in ctx.store.names():
        p = ctx.store.load(name)
        rows.append({"profile": name, "username": p.username, "id": p.user_id, "server": p.server,
                     "signed_in": p.signed_in})
    ctx.show(rows, lambda r: table(r, [("profile", "PROFILE"), ("username", "USER"), ("id", "ID"),
                                       ("server", "SERVER"), ("signed_in", "SIGNED IN")]))


USER_COLUMNS = [("id", "ID"), ("username", "USERNAME"), ("presence", "PRESENCE"), ("last_seen", "LAST SEEN")]


def cmd_users_search(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().search_users(args.prefix), lambda r: table(r, USER_COLUMNS))


def cmd_users_show(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    ctx.show(api.user(ctx.user_id(api, args.user)), lambda u: table([u], USER_COLUMNS))


def cmd_friends_list(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().friends(ctx.me), lambda r: table(r, USER_COLUMNS))


def cmd_friends_requests(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().friend_requests(ctx.me), lambda d: "incoming:\n" + table(d.get("incoming", []), USER_COLUMNS)
             + "\noutgoing:\n" + table(d.get("outgoing", []), USER_COLUMNS))


def cmd_friends_add(ctx: Context, args: argparse.Namespace) -> None:
    # The contract has one call for both: ask, or accept the other's pending request.
    api = ctx.api()
    ctx.show(api.friend_add(ctx.me, ctx.user_id(api, args.user)), lambda d: f"friendship: {d.get('status')}")


def cmd_friends_remove(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    api.friend_remove(ctx.me, ctx.user_id(api, args.user))
    ctx.show({"removed": True}, "removed (unfriended, cancelled or declined)")


def cmd_blocks_list(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().blocks(ctx.me), lambda r: table(r, USER_COLUMNS))


def cmd_blocks_add(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    ctx.show(api.block(ctx.me, ctx.user_id(api, args.user)) or {"blocked": True}, "blocked")


def cmd_blocks_remove(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    api.unblock(ctx.me, ctx.user_id(api, args.user))
    ctx.show({"unblocked": True}, "unblocked")


# --- chats ----------------------------------------------------------------------------

MEMBER_COLUMNS = [("id", "ID"), ("username", "USERNAME"), ("role", "ROLE"), ("last_read_message_id", "LAST READ")]


def _chat_human(chat: dict) -> str:
    title = chat.get("name") or "(direct)"
    return (f"chat {chat['id']}: {title} [{chat.get('type')}], {chat.get('last_seq', 0)} messages\n"
            + table(chat.get("members", []), MEMBER_COLUMNS))


def cmd_chats_list(ctx: Context, args: argparse.Namespace) -> None:
    chats = ctx.api().user_chats(ctx.me, archived=args.archived)

    def human(rows):
        flat = [{
            # 📌 pinned (first, as the server orders them); 🗄 archived
            "pin": "📌" if c.get("pinned") else "🗄" if c.get("archived") else "",
            "id": c["id"], "type": c.get("type"), "name": c.get("name") or "(direct)",
            "members": ", ".join(m.get("username", "?") for m in c.get("members", [])),
            "unread": c.get("unread_count"),
            "mentions": c.get("mention_count"),
            "last": (c.get("last_message") or {}).get("content"),
        } for c in rows]
        return table(flat, [("pin", ""), ("id", "ID"), ("type", "TYPE"), ("name", "NAME"), ("members", "MEMBERS"),
                            ("unread", "UNREAD"), ("mentions", "@"), ("last", "LAST MESSAGE")])

    ctx.show(chats, human)


def cmd_chats_create(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    members = [ctx.user_id(api, ref) for ref in args.users]
    ctx.show(api.chat_create(members, args.name or ""), _chat_human)


def cmd_chats_show(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().chat(args.chat), _chat_human)


def cmd_chats_members(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().members(args.chat), lambda r: table(r, MEMBER_COLUMNS))


def cmd_chats_add(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    ctx.show(api.member_add(args.chat, ctx.user_id(api, args.user)), lambda m: table([m], MEMBER_COLUMNS))


def cmd_chats_kick(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    api.member_remove(args.chat, ctx.user_id(api, args.user))
    ctx.show({"removed": True}, "removed from the chat")


def cmd_chats_role(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    ctx.show(api.member_role(args.chat, ctx.user_id(api, args.user), args.role),
             lambda m: table([m], MEMBER_COLUMNS))


def cmd_chats_rename(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().chat_rename(args.chat, args.name), _chat_human)


def cmd_chats_leave(ctx: Context, args: argparse.Namespace) -> None:
    ctx.api().member_remove(args.chat, ctx.me)
    ctx.show({"left": True}, f"left chat {args.chat}")


def cmd_chats_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.api().chat_delete(args.chat)
    ctx.show({"deleted": True}, f"deleted chat {args.chat}")


# --- messages -------------------------------------------------------------------------


def cmd_send(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    if args.file:
        message = api.send_file(args.chat, Path(args.file), content=args.text or "",
                                reply_to=args.reply_to, client_id=args.client_id)
    elif args.text:
        message = api.send(args.chat, args.text, reply_to=args.reply_to, client_id=args.client_id)
    else:
        raise UsageError("give the text to send, or --file")
    ctx.show(message, lambda m: f"sent: id {m['id']}, #{m['seq']} in chat {m['chat']}")


def cmd_react(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    if args.remove:
        api.unreact(args.chat, args.message, args.emoji)
        ctx.show({"removed": args.emoji}, f"reaction {args.emoji} taken back")
        return
    message = api.react(args.chat, args.message, args.emoji)
    ctx.show(message, lambda m: f"message {m['id']}: {output.reactions_text(m['reactions']) or 'no reactions'}")


def cmd_typing(ctx: Context, args: argparse.Namespace) -> None:
    """Say "typing" (every 5 s for --seconds, as an app does while the user types), then
    "stopped" unless --keep."""
    api = ctx.api()
    api.typing(args.chat, not args.stop)
    if not args.stop and args.seconds:
        end = time.monotonic() + args.seconds
        while time.monotonic() + TYPING_RESEND < end:
            time.sleep(TYPING_RESEND)
            api.typing(args.chat, True)
        time.sleep(max(0.0, end - time.monotonic()))
        api.typing(args.chat, False)
    state = "stopped" if args.stop or args.seconds else "typing"
    ctx.show({"chat": args.chat, "typing": state == "typing"}, f"chat {args.chat}: {state}")


# --- pins, forwards, invitations ---


def cmd_chats_pin(ctx: Context, args: argparse.Namespace) -> None:
    member = ctx.api().chat_pin(args.chat, ctx.me, not args.remove)
    ctx.show(member, f"chat {args.chat}: {'pinned' if member.get('pinned') else 'unpinned'}")


def cmd_chats_archive(ctx: Context, args: argparse.Namespace) -> None:
    member = ctx.api().chat_archive(args.chat, ctx.me, not args.remove)
    ctx.show(member, f"chat {args.chat}: {'archived' if member.get('archived') else 'back in the list'}")


def cmd_pin(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    if args.remove:
        api.message_unpin(args.chat, args.message)
        ctx.show({"unpinned": args.message}, f"message {args.message} unpinned")
        return
    message = api.message_pin(args.chat, args.message)
    ctx.show(message, lambda m: f"message {m['id']} pinned in chat {m['chat']}")


def cmd_pins(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    names = Names(api, {ctx.me: ctx.profile.username})
    ctx.show(api.pins(args.chat), lambda rows: "\n".join(output.message_line(m, names, own_id=ctx.me) for m in rows)
             or "(no pinned messages)")


def cmd_forward(ctx: Context, args: argparse.Namespace) -> None:
    message = ctx.api().forward(args.chat, args.message, client_id=args.client_id)
    ctx.show(message, lambda m: f"forwarded: id {m['id']}, #{m['seq']} in chat {m['chat']}, {output.forwarded_text(m)}")


def cmd_invite(ctx: Context, args: argparse.Namespace) -> None:
    message = ctx.api().invite(args.chat, args.title, url=args.url, expires_at=args.expires_at,
                               content=args.text, client_id=args.client_id)
    ctx.show(message, lambda m: f"invitation sent: id {m['id']}, #{m['seq']} in chat {m['chat']}")


def cmd_answer(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    message = api.answer(args.chat, args.message, args.answer)
    names = Names(api, {ctx.me: ctx.profile.username})
    ctx.show(message, lambda m: f"message {m['id']}: {output.invite_text(m['invite'], names)}")


def cmd_history(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    page = api.messages(args.chat, before=args.before, after=args.after, limit=args.limit)
    names = Names(api, {ctx.me: ctx.profile.username})

    def human(p):
        lines = [output.message_line(m, names, own_id=ctx.me) for m in p["results"]]
        if p.get("has_more"):
            lines.append("(more: --after the last id)" if args.after is not None else
                         f"(older: --before {p['results'][0]['id']})" if p["results"] else "")
        return "\n".join(lines) or "(no messages)"

    ctx.show(page, human)


def cmd_search(ctx: Context, args: argparse.Namespace) -> None:
    """Messages one can read that match the words, newest first, matches in [[ ]]."""
    api = ctx.api()
    page = api.search(args.query, chat=args.chat, before=args.before, limit=args.limit)
    names = Names(api, {ctx.me: ctx.profile.username})

    def human(p):
        lines = [output.search_line(hit, names) for hit in p["results"]]
        if p.get("has_more") and p["results"]:
            lines.append(f"(older: --before {p['results'][-1]['id']})")
        return "\n".join(lines) or "(no messages found)"

    ctx.show(page, human)


def _pointer(ctx: Context, args: argparse.Namespace, which: str) -> None:
    api = ctx.api()
    message_id = args.message
    if message_id is None:
        newest = api.messages(args.chat, limit=1)["results"]
        if not newest:
            raise UsageError(f"chat {args.chat} has no messages")
        message_id = newest[-1]["id"]
    answer = getattr(api, which)(args.chat, ctx.me, message_id)
    ctx.show(answer if answer is not None else {which: message_id}, f"{which} up to message {message_id}")


def cmd_read(ctx: Context, args: argparse.Namespace) -> None:
    _pointer(ctx, args, "read")


def cmd_delivered(ctx: Context, args: argparse.Namespace) -> None:
    _pointer(ctx, args, "delivered")


def cmd_download(ctx: Context, args: argparse.Namespace) -> None:
    data = ctx.api().attachment(args.chat, args.message, thumbnail=args.thumbnail)
    target = Path(args.output or f"chat{args.chat}-message{args.message}{'-thumb' if args.thumbnail else ''}")
    target.write_bytes(data)
    ctx.show({"saved": str(target), "bytes": len(data)}, f"saved {len(data)} bytes to {target}")


def cmd_sync(ctx: Context, args: argparse.Namespace) -> None:
    versions = {}
    for pair in args.chats:
        chat, _, version = pair.partition(":")
        if not (chat.isdigit() and version.isdigit()):
            raise UsageError(f"give chats as CHAT:VERSION, not {pair!r}")
        versions[int(chat)] = int(version)
    answer = ctx.api().sync(versions, args.limit)
    ctx.show(answer, lambda d: "\n".join(
        [f"chat {c['id']}: version {c['version']}, {len(c['messages'])} message(s) changed"
         + (" (more)" if c.get("has_more") else "") for c in d.get("changed", [])]
        + [f"chat {cid}: no longer yours" for cid in d.get("removed", [])]
        + [f"chat {c['id']}: new ({c.get('name') or 'direct'})" for c in d.get("new", [])]
    ) or "nothing changed")


def cmd_settings(ctx: Context, args: argparse.Namespace) -> None:
    api = ctx.api()
    changes = {
        name: value == "on"
        for name, value in (("read_receipts", args.read_receipts), ("push_previews", args.push_previews))
        if value is not None
    }
    if not changes:
        raise UsageError("nothing to change: give --read-receipts on|off or --push-previews on|off")
    answer = api.settings(**changes)
    ctx.show(answer, ", ".join(f"{k.replace('_', ' ')} {'on' if v else 'off'}" for k, v in changes.items()))


def cmd_push_token(ctx: Context, args: argparse.Namespace) -> None:
    """Register the phone's FCM token (with fcm-sink, any string: the sink delivers it)."""
    api = ctx.api()
    if args.clear:
        api.push_token(None)
        ctx.profile.push_token = None
        ctx.store.save(ctx.profile)
        ctx.show({"push": False}, "push token removed")
        return
    token = args.token or f"chat-sim-{ctx.args.profile}"
    answer = api.push_token(token)
    ctx.profile.push_token = token
    ctx.profile.fcm_sink = args.sink or os.environ.get("CHAT_SIM_FCM_SINK") or ctx.profile.fcm_sink
    ctx.store.save(ctx.profile)
    ctx.show(answer, f"push token registered: {token}")


def cmd_fcm_sink(ctx: Context, args: argparse.Namespace) -> int:
    """A stand-in FCM (send endpoint + OAuth2 token endpoint) printing each push."""
    from chat_sim.fcm_sink import FcmSink

    def on_push(push) -> None:
        if ctx.json:
            print_json({"token": push.token, "data": push.data, "android": push.android, "at": push.received_at})
        else:
            data = " ".join(f"{k}={v!r}" for k, v in sorted(push.data.items()))
            print(f"push to {push.token} ({push.android.get('priority', '?')}): {data}", flush=True)

    sink = FcmSink(host=args.host, port=args.port, on_push=on_push)
    if args.write_service_account:
        key = _rsa_key_pem()
        Path(args.write_service_account).write_text(json.dumps(sink.service_account(private_key_pem=key)))
        print(f"service account written to {args.write_service_account}", file=sys.stderr)
    sink.start()
    print(f"fcm-sink on {sink.url}: FCM_ENDPOINT={sink.url} FCM_PROJECT_ID=<any> "
          f"FCM_SERVICE_ACCOUNT_FILE=<a file with token_uri {sink.url}/token>", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        sink.stop()


def _rsa_key_pem() -> str:
    """A fresh RSA key for a throw-away service account (openssl, as Debian ships it)."""
    try:
        done = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                              capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise UsageError(f"cannot make a key with openssl ({exc}): write the service account yourself") from None
    return done.stdout


def cmd_edit(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().message_edit(args.chat, args.message, args.text), lambda m: f"edited message {m['id']}")


def cmd_delete_message(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api().message_delete(args.chat, args.message), lambda m: f"deleted message {m['id']}")


def cmd_health(ctx: Context, args: argparse.Namespace) -> None:
    ctx.show(ctx.api(auth=False).health(), lambda d: " ".join(f"{k}={v}" for k, v in d.items()))


# --- phones ---------------------------------------------------------------------------


def cmd_listen(ctx: Context, args: argparse.Namespace) -> int:
    profile = ctx.require_session()
    ctx.store.hold_connection(profile.name)
    api = ctx.api()
    names = Names(api, {profile.user_id: profile.username})
    shown = [0]

    def on_item(item: Item) -> None:
        if item.kind == "message":
            shown[0] += 1
        if ctx.json:
            print_json({"kind": item.kind, "type": item.type, "chat": item.chat, "source": item.source,
                        "data": item.data, "at": item.at})
            return
        if item.kind == "message":
            print(output.message_line(item.data, names, own_id=profile.user_id, source=item.source), flush=True)
        elif item.kind == "event":
            line = output.event_line(item.type, item.chat, item.data, names)
            print(f"{line}  (fetched)" if item.source == "fetched" else line, flush=True)
        elif item.kind == "gap":
            print(f"! [chat {item.chat}] gap: {item.data['missing']} message(s) missing after "
                  f"#{item.data['after_seq']}; catching up over HTTP", flush=True)
        elif item.type == "caught_up":
            print(f"~ connected; caught up over HTTP: {item.data['fetched']} message(s), "
                  f"{item.data['updated']} edit(s)/deletion(s)", flush=True)
        elif item.type == "chat_removed":
            print(f"~ [chat {item.chat}] no longer a member: forgotten", flush=True)
        elif item.kind == "error":
            print(f"! {item.type}: {item.data}", file=sys.stderr, flush=True)
        elif item.type == "disconnected":
            print(f"~ disconnected ({item.data['reason']}); reconnecting", flush=True)
        elif item.type == "login_cooldown":
            print(f"~ the broker refuses this device's account for now (failed logins); "
                  f"trying again in {item.data['retry_in']:g} s", flush=True)

    listener = Listener(api, user_id=profile.user_id, mqtt=profile.mqtt, on_item=on_item,
                        cursors={int(k): v for k, v in profile.cursors.items()},
                        versions={int(k): v for k, v in profile.versions.items()}, chats=args.chat,
                        typing=not args.no_typing)
    deadline = time.monotonic() + args.duration if args.duration else None

    def running() -> bool:
        return ((deadline is None or time.monotonic() < deadline) and (not args.count or shown[0] < args.count)
                and not listener.refused.is_set())

    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while running() and time.monotonic() < end:
            time.sleep(0.05)

    listener.start()
    try:
        while running():
            if not args.background:
                wait(3600)
                continue
            wait(args.foreground)
            if not running():
                break
            before = listener.stats.copy()
            _note(ctx, "background", {"seconds": args.background},
                  f"~ going to the background for {args.background:g} s (connection cut; "
                  "the broker keeps the session)")
            listener.go_background()
            pushes_before = len(_pushes(profile))
            wait(args.background)
            for push in _pushes(profile)[pushes_before:]:
                data = push.get("data", {})
                _note(ctx, "push", data, "~ push while away: " + " ".join(
                    f"{k}={v!r}" for k, v in sorted(data.items())))
            listener.come_back()
            listener.wait_ready(15)
            after = listener.stats
            report = {"fetched": after.fetched - before.fetched, "updated": after.updates - before.updates,
                      "queued_copies_dropped": after.duplicates - before.duplicates}
            _note(ctx, "foreground", report,
                  f"~ back: {report['fetched']} message(s) and {report['updated']} edit(s)/deletion(s) "
                  "fetched over HTTP; "
                  f"{report['queued_copies_dropped']} copies the broker had queued arrived and "
                  "were dropped as already shown")
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
        profile.cursors = {str(k): v for k, v in listener.shown_cursors().items()}
        profile.versions = {str(k): v for k, v in listener.shown_versions().items()}
        ctx.store.save(profile)
    if listener.refused.is_set():
        print("chat-sim: the broker refuses this device's credentials (logged out?)", file=sys.stderr)
        return 1
    return 0


def _pushes(profile: Profile) -> list[dict]:
    """What the phone's fcm-sink received for its token so far (none without a sink)."""
    if not (profile.fcm_sink and profile.push_token):
        return []
    url = f"{profile.fcm_sink.rstrip('/')}/pushes?{urllib.parse.urlencode({'token': profile.push_token})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["pushes"]
    except (OSError, ValueError, KeyError):
        return []


def _note(ctx: Context, kind: str, data: dict, text: str) -> None:
    if ctx.json:
        print_json({"kind": "status", "type": kind, "data": data, "at": time.time()})
    else:
        print(text, flush=True)


def cmd_shell(ctx: Context, args: argparse.Namespace) -> int:
    from chat_sim.shell import Shell

    profile = ctx.require_session()
    ctx.store.hold_connection(profile.name)
    return Shell(ctx.store, profile, chat_id=args.chat).run()


def cmd_scenario(ctx: Context, args: argparse.Namespace) -> int:
    from chat_sim.scenario import run_files

    return run_files([Path(f) for f in args.files], server=ctx.server, json_mode=ctx.json,
                     verbose=args.verbose)


def _ports(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ports: {value!r}") from None


def cmd_load(ctx: Context, args: argparse.Namespace) -> int:
    from chat_sim.load import LoadConfig, run_load

    config = LoadConfig(
        server=ctx.server, users=args.users, chats=args.chats, group_size=args.group_size,
        rate=args.rate, duration=args.duration, grace=args.grace, connections=args.connections,
        closed_loop=args.closed_loop, receiver=args.receiver, receivers=args.receivers, cache_dir=ctx.store.home / "load", user_prefix=args.user_prefix,
        settle=args.settle, burst_phones=args.burst_phones, burst_at=args.burst_at,
        burst_window=args.burst_window, offline=args.offline, push_sink=args.push_sink,
        mqtt_ports=tuple(args.mqtt_ports), phones_timeout=args.phones_timeout,
    )
    return run_load(config, json_mode=ctx.json)


# --- the parser -----------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before and after the subcommand: the subcommand's copies default to
    # SUPPRESS so they do not overwrite what was given before it.
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--home", default=d(None), help="profiles directory (default $CHAT_SIM_HOME or ~/.chat-sim)")
    parser.add_argument("--profile", "-p", default=d(os.environ.get("CHAT_SIM_PROFILE", "default")),
                        help="which simulated phone (default $CHAT_SIM_PROFILE or 'default')")
    parser.add_argument("--server", "-s", default=d(None),
                        help=f"server URL (default: the profile's, else $CHAT_SIM_SERVER, else {DEFAULT_SERVER})")
    parser.add_argument("--json", action="store_true", default=d(False), help="JSON output for scripts")
    parser.add_argument("--ca", default=d(os.environ.get("CHAT_SIM_CA")), metavar="FILE",
                        help="trust this CA certificate (the server's local CA: DATA_DIR/tls/ca.pem): "
                             "HTTPS is verified against it and MQTT goes over TLS (default $CHAT_SIM_CA)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-sim", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(sub, name: str, handler, help: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kwargs)
        _common(p, defaults=False)
        p.set_defaults(handler=handler)
        return p

    def group(name: str, help: str):
        p = commands.add_parser(name, help=help, description=help)
        return p.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")

    for name, handler, help in [("signup", cmd_signup, "create an account; the profile signs in"),
                                ("login", cmd_login, "sign in (a new device of the user)")]:
        p = command(commands, name, handler, help)
        p.add_argument("username")
        p.add_argument("--password", help="else $CHAT_SIM_PASSWORD, else asked on the terminal")
        p.add_argument("--device", default="chat-sim", help="device name shown to the server")
    command(commands, "logout", cmd_logout, "revoke this device's token (HTTP and MQTT)")
    command(commands, "me", cmd_me, "who this profile is, with its MQTT credentials")
    command(commands, "profiles", cmd_profiles, "list the local profiles")
    command(commands, "health", cmd_health, "the server's /health/")

    users = group("users", "find and show users")
    command(users, "search", cmd_users_search, "users whose name starts with PREFIX").add_argument("prefix")
    command(users, "show", cmd_users_show, "one user, with presence").add_argument("user")

    friends = group("friends", "friends and friend requests")
    command(friends, "list", cmd_friends_list, "accepted friends")
    command(friends, "requests", cmd_friends_requests, "pending requests, incoming and outgoing")
    command(friends, "add", cmd_friends_add, "ask USER to be friends").add_argument("user")
    command(friends, "accept", cmd_friends_add, "accept USER's request").add_argument("user")
    command(friends, "remove", cmd_friends_remove, "unfriend, cancel or decline").add_argument("user")

    blocks = group("blocks", "blocked users")
    command(blocks, "list", cmd_blocks_list, "who this user blocks")
    command(blocks, "add", cmd_blocks_add, "block USER").add_argument("user")
    command(blocks, "remove", cmd_blocks_remove, "unblock USER").add_argument("user")

    chats = group("chats", "chats and their members")
    p = command(chats, "list", cmd_chats_list, "this user's chats: pinned first (📌), then most recent first")
    p.add_argument("--archived", action="store_true", help="the archived chats instead")
    p = command(chats, "pin", cmd_chats_pin, "pin a chat first in your list (at most 5; --remove: unpin)")
    p.add_argument("chat", type=int)
    p.add_argument("--remove", action="store_true")
    p = command(chats, "archive", cmd_chats_archive,
                "archive a chat (out of your list until a newer message, unless muted; --remove: bring it back)")
    p.add_argument("chat", type=int)
    p.add_argument("--remove", action="store_true")
    p = command(chats, "create", cmd_chats_create,
                "one user and no --name: the direct chat of the pair; else a group you own")
    p.add_argument("users", nargs="+", help="ids, local profile names or usernames")
    p.add_argument("--name", help="group name")
    command(chats, "show", cmd_chats_show, "a chat with its members").add_argument("chat", type=int)
    command(chats, "members", cmd_chats_members, "members with roles and read pointers").add_argument("chat", type=int)
    for name, handler, help in [("add", cmd_chats_add, "add USER to a group"),
                                ("kick", cmd_chats_kick, "remove USER from a group")]:
        p = command(chats, name, handler, help)
        p.add_argument("chat", type=int)
        p.add_argument("user")
    p = command(chats, "role", cmd_chats_role, "change USER's role")
    p.add_argument("chat", type=int)
    p.add_argument("user")
    p.add_argument("role", choices=ROLES)
    p = command(chats, "rename", cmd_chats_rename, "rename a group")
    p.add_argument("chat", type=int)
    p.add_argument("name")
    command(chats, "leave", cmd_chats_leave, "leave a group").add_argument("chat", type=int)
    command(chats, "delete", cmd_chats_delete,
            "delete a group (owner), or hide a direct chat until its next message").add_argument("chat", type=int)

    p = command(commands, "send", cmd_send, "send a message (text, --file, --reply-to)")
    p.add_argument("chat", type=int)
    p.add_argument("text", nargs="?")
    p.add_argument("--file", help="attach this file (multipart upload)")
    p.add_argument("--reply-to", type=int, metavar="MESSAGE_ID")
    p.add_argument("--client-id", help="idempotency key (default: a fresh one)")
    p = command(commands, "react", cmd_react, "react to a message with an emoji (--remove: take it back)")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int)
    p.add_argument("emoji", help="one of 👍 👎 ❤️ 😂 😮 😢 🙏 🔥 🎉")
    p.add_argument("--remove", action="store_true")
    p = command(commands, "pin", cmd_pin, "pin a message in its chat (admins, owner; --remove: unpin)")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int)
    p.add_argument("--remove", action="store_true")
    command(commands, "pins", cmd_pins, "a chat's pinned messages, the latest first").add_argument("chat", type=int)
    p = command(commands, "forward", cmd_forward, "forward MESSAGE (of any chat you can read) into CHAT")
    p.add_argument("chat", type=int, help="where to")
    p.add_argument("message", type=int)
    p.add_argument("--client-id", help="idempotency key (default: a fresh one)")
    p = command(commands, "invite", cmd_invite, "send an invitation (a game, an outing) that members answer")
    p.add_argument("chat", type=int)
    p.add_argument("title")
    p.add_argument("--url", help="an http(s) link")
    p.add_argument("--expires-at", metavar="ISO-8601", help="no answers after then")
    p.add_argument("--text", help="the message's text (default: the title)")
    p.add_argument("--client-id", help="idempotency key (default: a fresh one)")
    p = command(commands, "answer", cmd_answer, "accept or decline an invitation (again: change the answer)")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int)
    p.add_argument("answer", choices=("accept", "decline"))
    p = command(commands, "typing", cmd_typing, 'say "typing" in a chat (--stop: stopped)')
    p.add_argument("chat", type=int)
    p.add_argument("--stop", action="store_true")
    p.add_argument("--seconds", type=float, help="keep typing this long (repeating every 5 s), then stop")
    p = command(commands, "history", cmd_history, "a page of messages, oldest first")
    p.add_argument("chat", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--before", type=int, metavar="MESSAGE_ID")
    p.add_argument("--after", type=int, metavar="MESSAGE_ID")
    p = command(commands, "search", cmd_search, "search the messages you can read, newest first")
    p.add_argument("query", help="words (each matches a word's start; CJK and Korean also inside words)")
    p.add_argument("--chat", type=int, help="only this chat")
    p.add_argument("--before", type=int, metavar="MESSAGE_ID", help="older than this hit (the next page)")
    p.add_argument("--limit", type=int, help="1 to 50 (default 20)")
    p = command(commands, "read", cmd_read, "move your read pointer (default: to the newest message)")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int, nargs="?")
    p = command(commands, "delivered", cmd_delivered,
                "tell the server this phone received up to a message (default: the newest)")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int, nargs="?")
    p = command(commands, "download", cmd_download, "save a message's attachment")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int)
    p.add_argument("--output", "-o", help="file to write (default chat<C>-message<M>)")
    p.add_argument("--thumbnail", action="store_true", help="the image's thumbnail instead")
    p = command(commands, "sync", cmd_sync, "what changed since the given chat versions (catch-up)")
    p.add_argument("chats", nargs="*", metavar="CHAT:VERSION")
    p.add_argument("--limit", type=int, help="messages per chat (server default 200)")
    p = command(commands, "settings", cmd_settings, "change this user's settings")
    p.add_argument("--read-receipts", choices=("on", "off"))
    p.add_argument("--push-previews", choices=("on", "off"))
    p = command(commands, "push-token", cmd_push_token, "register this phone's push (FCM) token")
    p.add_argument("token", nargs="?", help="default chat-sim-<profile>")
    p.add_argument("--clear", action="store_true", help="remove it: no more pushes to this phone")
    p.add_argument("--sink", help="the fcm-sink URL that gets this phone's pushes (listen --background "
                                  "shows them; default $CHAT_SIM_FCM_SINK)")
    p = command(commands, "fcm-sink", cmd_fcm_sink, "run a stand-in FCM server that prints each push")
    p.add_argument("--port", type=int, default=9099)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--write-service-account", metavar="FILE",
                   help="write a service-account JSON for the server (FCM_SERVICE_ACCOUNT_FILE)")
    p = command(commands, "edit", cmd_edit, "edit your message")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int)
    p.add_argument("text")
    p = command(commands, "delete-message", cmd_delete_message, "soft-delete a message")
    p.add_argument("chat", type=int)
    p.add_argument("message", type=int)

    p = command(commands, "listen", cmd_listen,
                "receive like the phone: persistent MQTT session, presence, catch-up over HTTP")
    p.add_argument("--chat", type=int, action="append", default=[],
                   help="follow this chat from its newest message, without its history (repeatable)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.add_argument("--background", type=float, metavar="SECONDS",
                   help="go to the background (connection cut) for SECONDS, come back, repeat")
    p.add_argument("--foreground", type=float, default=5.0, metavar="SECONDS",
                   help="time in the foreground between backgrounds (default 5)")
    p.add_argument("--no-typing", action="store_true",
                   help="do not follow the chats' topics for typing.updated")

    p = command(commands, "shell", cmd_shell, "a minimal chat app in the terminal")
    p.add_argument("chat", type=int, nargs="?", help="open this chat at once")

    p = command(commands, "scenario", cmd_scenario, "run YAML multi-user scripts with expectations")
    p.add_argument("files", nargs="+")
    p.add_argument("--verbose", "-v", action="store_true", help="also print every step's answer")

    p = command(commands, "load", cmd_load, "drive the stack with many simulated phones")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--chats", type=int, default=10)
    p.add_argument("--group-size", type=int, default=2, help="members per chat (2 = direct chats)")
    p.add_argument("--rate", type=float, default=50.0, help="messages per second, all chats together")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds to wait after sending for the last copies (then: lost)")
    p.add_argument("--connections", type=int, default=16, help="concurrent HTTP connections")
    p.add_argument("--closed-loop", action="store_true",
                   help="each connection sends its next message as soon as the last is answered "
                        "(--rate is then ignored): the server's saturated throughput")
    p.add_argument("--receivers", type=int, default=0,
                   help="processes hosting the phones (default: from the expected delivery rate)")
    p.add_argument("--receiver", choices=["paho", "mosquitto_sub"], default="paho",
                   help="what hosts the phones: paho clients in Python (default, with presence) or one "
                        "mosquitto_sub process each (cheap copies, for big fan-out; no presence)")
    p.add_argument("--user-prefix", default="load", help="load users are named PREFIX-<n>")
    p.add_argument("--settle", type=float,
                   help="seconds between the phones' connecting (a presence burst) and sending "
                        "(default: 2 + 0.004 per phone; 0 starts at once)")
    p.add_argument("--burst-phones", type=int, default=0,
                   help="extra phones (in no chat) that connect all at once during sending")
    p.add_argument("--burst-at", type=float, default=0.0, help="seconds into sending the burst starts")
    p.add_argument("--burst-window", type=float, default=5.0,
                   help="seconds compared: sent during the burst vs. just before it")
    p.add_argument("--mqtt-ports", type=_ports, default=(), metavar="P1,P2,...",
                   help="phone n connects to port P[n mod count] of the server's MQTT host (phones "
                        "spread over a broker cluster's nodes) instead of the port the server hands out")
    p.add_argument("--phones-timeout", type=float, metavar="S",
                   help="give up (exit 2) unless every phone is connected and subscribed within S "
                        "seconds (default: 30 + 0.02 per phone)")
    p.add_argument("--offline", action="store_true",
                   help="no phone connects: every member is away (nothing received over MQTT)")
    p.add_argument("--push-sink", metavar="URL",
                   help="every user registers a push token and the pushes are counted at this "
                        "fcm-sink (implies --offline): pushes/s, commit->push latency, missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tls.configure(args.ca)
    try:
        ctx = Context(args)
        result = args.handler(ctx, args)
        return result if isinstance(result, int) else 0
    except ApiError as exc:
        if args.json:
            print_json(exc.envelope())
        else:
            print(output.error_line(exc), file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError, ProfileBusy) as exc:
        print(f"chat-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
