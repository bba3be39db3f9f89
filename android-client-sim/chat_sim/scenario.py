"""`chat-sim scenario FILE...`: multi-user QA scripts in YAML, with expectations.

A scenario names its users (each signed up afresh, as `<name>-<run id>`) and lists
steps; each step is one mapping `{action: arguments}`:

    name: direct chat
    users: [alice, bob]
    steps:
      - connect: bob                     # bob's phone starts listening (MQTT + catch-up)
      - create_chat: {as: alice, members: [bob], save: dm, status: 201}
      - send: {as: alice, chat: dm, content: hello bob}
      - receive: {user: bob, chat: dm, content: hello bob, within: 2}
      - send: {as: bob, chat: dm, content: hi, expect: {author: $bob, seq: 2}}

Actions that call the API take `as:` (who acts), may `save:` the answer under a name
(`$name` is then its id, `$name.field` a field; `$alice` is alice's user id and
`$alice.username` her real username), and check
`status:` (default: any 2xx), `error:` (the envelope's code) and `expect:` (a subset of
the answer). Arguments named chat, message, reply_to take a saved name or an id; user and
members take user names. Expectation-only steps: `receive`, `no_receive`, `sleep`.
The first unmet expectation stops the run: exit status 1 (2 for a malformed file).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chat_sim.api import Api, ApiError
from chat_sim.mqtt import Item, Listener
from chat_sim.output import print_json

PASSWORD = "scenario-" + secrets.token_urlsafe(12)
DEFAULT_WITHIN = 3.0


class Unmet(Exception):
    """An expectation that did not hold."""


class ScenarioError(Exception):
    """A malformed scenario (unknown action, missing argument, unknown name)."""


@dataclass
class Phone:
    """One scenario user: its HTTP client, and its listening phone once connected."""

    name: str
    user_id: int
    username: str
    api: Api
    mqtt: dict
    listener: Listener | None = None
    items: list[Item] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_item(self, item: Item) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()


class Run:
    def __init__(self, spec: dict, *, server: str, verbose: bool, say) -> None:
        self.spec = spec
        self.server = server
        self.verbose = verbose
        self.say = say
        self.run_id = secrets.token_hex(3)
        self.phones: dict[str, Phone] = {}
        self.saved: dict[str, Any] = {}

    # --- names --------------------------------------------------------------------------

    def phone(self, name: Any) -> Phone:
        if name not in self.phones:
            raise ScenarioError(f"unknown user {name!r} (declare it under users:)")
        return self.phones[name]

    def uid(self, name: Any) -> int:
        return name if isinstance(name, int) else self.phone(name).user_id

    def ref(self, value: Any) -> Any:
        """A saved name (or `$name`) as its id; ints as they are."""
        if isinstance(value, str):
            return self.resolve("$" + value.lstrip("$"))
        return value

    def resolve(self, value: Any) -> Any:
        """`$name` / `$name.field` in strings, lists and mappings, recursively."""
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not (isinstance(value, str) and value.startswith("$")):
            return value
        name, _, attr = value[1:].partition(".")
        if name in self.phones:
            phone = self.phones[name]
            return phone.username if attr == "username" else phone.user_id
        if name not in self.saved:
            raise ScenarioError(f"nothing saved as {name!r}")
        found = self.saved[name]
        if attr:
            return found[attr]
        return found["id"] if isinstance(found, dict) and "id" in found else found

    # --- running ------------------------------------------------------------------------

    def execute(self) -> None:
        try:
            for name in self.spec.get("users", []):
                self.signup(str(name))
            for index, step in enumerate(self.spec.get("steps") or [], 1):
                if not isinstance(step, dict) or len(step) != 1:
                    raise ScenarioError(f"step {index}: one mapping {{action: arguments}} expected, got {step!r}")
                (action, args), = step.items()
                started = time.monotonic()
                label = f"{index:>2} {action} {_label(args)}"
                handler = getattr(self, f"do_{action}", None)
                if handler is None:
                    raise ScenarioError(f"step {index}: unknown action {action!r}")
                try:
                    handler(args if isinstance(args, dict) else {"_": args})
                except Unmet as exc:
                    self.say(f"  ✗ {label}\n      {exc}")
                    raise Unmet(f"step {index} ({action}): {exc}") from None
                except KeyError as exc:
                    raise ScenarioError(f"step {index} ({action}): missing argument {exc}") from None
                self.say(f"  ✓ {label} ({(time.monotonic() - started) * 1000:.0f} ms)")
        finally:
            for phone in self.phones.values():
                if phone.listener is not None:
                    phone.listener.stop()

    def signup(self, name: str, status: Any = None, error: str | None = None) -> None:
        api = Api(self.server)
        username = f"{name}-{self.run_id}"
        answer = self.call(lambda: api.signup(username, PASSWORD, "scenario"), {"status": status, "error": error}, api)
        if answer is not None:
            api.token = answer["token"]
            self.phones[name] = Phone(name, answer["id"], username, api, answer["mqtt"])

    def call(self, fn, args: dict, api: Api) -> Any:
        """Call the API and check status / error / expect; save the answer if asked.
        Returns the answer, or None when the call was (as expected) refused."""
        want_status, want_error = args.get("status"), args.get("error")
        try:
            answer, failed = fn(), None
            status = api.last_status
        except ApiError as exc:
            answer, failed, status = exc.envelope(), exc, exc.status
        got = f"{status} {failed.code}: {failed.message}" if failed else f"{status}: {_brief(answer, 300)}"
        if failed is None and (want_error or (want_status is not None and int(want_status) >= 300)):
            raise Unmet(f"expected {want_status or ''} {want_error or ''}".rstrip() + f", got {got}")
        if failed is not None and want_status is None and not want_error:
            raise Unmet(f"expected success, got {got}")
        if want_status is not None and int(want_status) != status:
            raise Unmet(f"expected {want_status}, got {got}")
        if want_error and failed is not None and want_error != failed.code:
            raise Unmet(f"expected error {want_error}, got {got}")
        if self.verbose:
            self.say(f"      -> {status} {_brief(answer, 500)}")
        if "expect" in args:
            problem = _mismatch(self.resolve(args["expect"]), answer)
            if problem:
                raise Unmet(f"answer differs: {problem}; answer: {_brief(answer, 300)}")
        if args.get("save"):
            self.saved[args["save"]] = answer
        return answer if failed is None else None

    def api_of(self, args: dict) -> tuple[Phone, Api]:
        phone = self.phone(args["as"])
        return phone, phone.api

    # --- account actions ----------------------------------------------------------------

    def do_signup(self, args: dict) -> None:
        name = str(args.get("user", args.get("_")))
        if name in self.phones and args.get("status") is None:
            raise ScenarioError(f"{name} is signed up already")
        if name in self.phones:  # the same username again: expected to be refused
            api = Api(self.server)
            self.call(lambda: api.signup(self.phones[name].username, PASSWORD), args, api)
        else:
            self.signup(name, args.get("status"), args.get("error"))

    def do_login(self, args: dict) -> None:
        phone = self.phone(args["as"])
        password = args.get("password", PASSWORD)
        api = Api(self.server)
        self.call(lambda: api.login(phone.username, password, "scenario"), args, api)

    def do_logout(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(api.logout, args, api)

    def do_me(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(api.me, args, api)

    def do_search(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.search_users(self.resolve(args["prefix"])), args, api)

    def do_friend_add(self, args: dict) -> None:
        phone, api = self.api_of(args)
        self.call(lambda: api.friend_add(phone.user_id, self.uid(args["user"])), args, api)

    def do_friend_remove(self, args: dict) -> None:
        phone, api = self.api_of(args)
        self.call(lambda: api.friend_remove(phone.user_id, self.uid(args["user"])), args, api)

    def do_block(self, args: dict) -> None:
        phone, api = self.api_of(args)
        self.call(lambda: api.block(phone.user_id, self.uid(args["user"])), args, api)

    def do_unblock(self, args: dict) -> None:
        phone, api = self.api_of(args)
        self.call(lambda: api.unblock(phone.user_id, self.uid(args["user"])), args, api)

    # --- chat actions -------------------------------------------------------------------

    def do_create_chat(self, args: dict) -> None:
        _, api = self.api_of(args)
        members = [self.uid(m) for m in args["members"]]
        self.call(lambda: api.chat_create(members, args.get("name", "")), args, api)

    def do_get_chat(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.chat(self.ref(args["chat"])), args, api)

    def do_rename(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.chat_rename(self.ref(args["chat"]), args["name"]), args, api)

    def do_delete_chat(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.chat_delete(self.ref(args["chat"])), args, api)

    def do_members(self, args: dict) -> None:
        """`roles: {alice: owner, ...}`: exactly these members with these roles."""
        _, api = self.api_of(args)
        answer = self.call(lambda: api.members(self.ref(args["chat"])), args, api)
        if "roles" in args and answer is not None:
            want = {self.uid(name): role for name, role in args["roles"].items()}
            got = {m["id"]: m["role"] for m in answer}
            if want != got:
                raise Unmet(f"members/roles {got} != expected {want}")

    def do_add_member(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.member_add(self.ref(args["chat"]), self.uid(args["user"])), args, api)

    def do_kick(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.member_remove(self.ref(args["chat"]), self.uid(args["user"])), args, api)

    def do_leave(self, args: dict) -> None:
        phone, api = self.api_of(args)
        self.call(lambda: api.member_remove(self.ref(args["chat"]), phone.user_id), args, api)

    def do_set_role(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.member_role(self.ref(args["chat"]), self.uid(args["user"]), args["role"]), args, api)

    def do_read(self, args: dict) -> None:
        phone, api = self.api_of(args)
        self.call(lambda: api.read(self.ref(args["chat"]), phone.user_id, self.ref(args["message"])), args, api)

    # --- message actions ----------------------------------------------------------------

    def do_send(self, args: dict) -> None:
        _, api = self.api_of(args)
        reply_to = self.ref(args["reply_to"]) if args.get("reply_to") is not None else None
        content = str(self.resolve(args["content"]))
        self.call(lambda: api.send(self.ref(args["chat"]), content, reply_to=reply_to,
                                   client_id=args.get("client_id")), args, api)

    def do_send_many(self, args: dict) -> None:
        """`count` messages `content` with {i} = 1..count, each expected to succeed."""
        _, api = self.api_of(args)
        chat = self.ref(args["chat"])
        for text in _expand(args["content"], int(args["count"])):
            self.call(lambda text=text: api.send(chat, text), {}, api)

    def do_history(self, args: dict) -> None:
        """`contents: [...]` (oldest first, exactly) or `count: N` of the newest page."""
        _, api = self.api_of(args)
        answer = self.call(lambda: api.messages(self.ref(args["chat"]), limit=args.get("limit")), args, api)
        if answer is None:
            return
        got = [m["content"] for m in answer["results"]]
        if "contents" in args:
            want = [str(self.resolve(c)) for c in args["contents"]]
            if got != want:
                raise Unmet(f"history {got} != expected {want}")
        if "count" in args and len(got) != int(args["count"]):
            raise Unmet(f"history has {len(got)} messages, expected {args['count']}: {got}")

    def do_edit(self, args: dict) -> None:
        _, api = self.api_of(args)
        chat, message = self.ref(args["chat"]), self.ref(args["message"])
        self.call(lambda: api.message_edit(chat, message, args["content"]), args, api)

    def do_delete_message(self, args: dict) -> None:
        _, api = self.api_of(args)
        self.call(lambda: api.message_delete(self.ref(args["chat"]), self.ref(args["message"])), args, api)

    # --- phones -------------------------------------------------------------------------

    def do_connect(self, args: dict) -> None:
        """Start the user's phone and wait for its first catch-up."""
        phone = self.phone(args.get("user", args.get("_")))
        if phone.listener is None:
            phone.listener = Listener(Api(self.server, phone.api.token), user_id=phone.user_id,
                                      mqtt=phone.mqtt, on_item=phone.on_item)
            phone.listener.start()
        else:
            phone.listener.come_back()
        if not phone.listener.wait_ready(float(args.get("within", 10))):
            raise Unmet(f"{phone.name}'s phone did not connect and catch up within {args.get('within', 10)} s")

    do_reconnect = do_connect

    def do_disconnect(self, args: dict) -> None:
        """The phone goes to the background: connection cut, persistent session kept."""
        phone = self.phone(args.get("user", args.get("_")))
        if phone.listener is None:
            raise ScenarioError(f"{phone.name} is not connected")
        phone.listener.go_background()

    def do_receive(self, args: dict) -> None:
        """The user's phone shows what is described within `within` seconds:
        `content: X` (a message, optionally `from: user`), `contents: [...]` (exactly
        these, in this order, among the chat's messages whose content is listed; a string
        with {i} and `count` expands to a list), or `event: type` (with `data:` a subset).
        Unless `gaps: allowed`, the phone must not have reported a seq gap in the chat."""
        phone = self.phone(args["user"])
        within = float(args.get("within", DEFAULT_WITHIN))
        check = self._matcher(args)
        deadline = time.monotonic() + within
        with phone.cond:
            problem = check(phone.items)
            while problem and time.monotonic() < deadline:
                phone.cond.wait(deadline - time.monotonic())
                problem = check(phone.items)
        if problem:
            raise Unmet(f"{args['user']} did not receive it within {within:g} s: {problem}")

    def do_no_receive(self, args: dict) -> None:
        """Nothing matching arrives for `for` seconds (a deliberate wait)."""
        phone = self.phone(args["user"])
        seconds = float(args.get("for", 1.0))
        check = self._matcher({**args, "gaps": "allowed"})
        time.sleep(seconds)
        with phone.cond:
            if check(phone.items) is None:
                raise Unmet(f"{args['user']} received what it should not have")

    def do_sleep(self, args: dict) -> None:
        time.sleep(float(args.get("seconds", args.get("_", 1))))

    def _matcher(self, args: dict):
        """A function of the phone's items: None when `args` is satisfied, else why not."""
        chat = self.ref(args["chat"]) if "chat" in args else None
        author = self.uid(args["from"]) if "from" in args else None
        gaps_ok = args.get("gaps") == "allowed"

        def in_chat(item: Item) -> bool:
            return chat is None or item.chat == chat

        def gaps(items: list[Item]) -> str | None:
            found = [i.data for i in items if i.kind == "gap" and in_chat(i)]
            return None if gaps_ok or not found else f"seq gaps reported: {found}"

        if "event" in args:
            want_data = self.resolve(args.get("data", {}))

            def check_event(items):
                for item in items:
                    if item.kind == "event" and item.type == args["event"] and in_chat(item):
                        if not _mismatch(want_data, item.data):
                            return None
                return f"no {args['event']} event matching {want_data}"
            return check_event

        if "contents" in args:
            want = args["contents"]
            want = _expand(want, int(args["count"])) if isinstance(want, str) else [str(self.resolve(c)) for c in want]
            wanted = set(want)

            def check_sequence(items):
                got = [i.data["content"] for i in items
                       if i.kind == "message" and in_chat(i) and i.data["content"] in wanted]
                if got != want:
                    return f"messages {got} != expected {want}"
                return gaps(items)
            return check_sequence

        content = str(self.resolve(args["content"]))

        def check_message(items):
            for item in items:
                if (item.kind == "message" and in_chat(item) and item.data["content"] == content
                        and (author is None or item.data["author"] == author)):
                    return gaps(items)
            return f"no message {content!r}"
        return check_message


def _expand(template: str, count: int) -> list[str]:
    return [template.replace("{i}", str(i)) for i in range(1, count + 1)]


def _mismatch(want: Any, got: Any, path: str = "") -> str | None:
    """Why `got` does not contain `want` (dicts: a subset; lists: same length), or None."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{path or 'answer'} is not an object"
        for key, value in want.items():
            if key not in got:
                return f"{path}{key} missing"
            problem = _mismatch(value, got[key], f"{path}{key}.")
            if problem:
                return problem
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{path.rstrip('.')}: {got!r} != {want!r}"
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            problem = _mismatch(w, g, f"{path}{i}.")
            if problem:
                return problem
        return None
    return None if want == got else f"{path.rstrip('.')}: {got!r} != {want!r}"


def _label(args: Any) -> str:
    """`as=alice chat=dm content='hi'`: a step's arguments on one short line."""
    if not isinstance(args, dict):
        return _brief(args)
    return _brief(" ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                           for k, v in args.items()), 100)


def _brief(value: Any, limit: int = 80) -> str:
    text = re.sub(r"\s+", " ", str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_files(files: list[Path], *, server: str, json_mode: bool, verbose: bool) -> int:
    """Run scenarios in order; stop at the first unmet expectation. Exit status."""

    def say(text: str) -> None:
        if not json_mode:
            print(text, flush=True)

    for path in files:
        started = time.monotonic()
        try:
            spec = yaml.safe_load(path.read_text())
            if not isinstance(spec, dict):
                raise ScenarioError("the file must be a mapping with users: and steps:")
            name = spec.get("name", path.stem)
            say(f"scenario {name} ({path})")
            Run(spec, server=server, verbose=verbose, say=say).execute()
        except (ScenarioError, yaml.YAMLError, OSError) as exc:
            say(f"scenario {path}: malformed: {exc}")
            if json_mode:
                print_json({"scenario": str(path), "passed": False, "error": f"malformed: {exc}"})
            return 2
        except Unmet as exc:
            say(f"FAILED: {exc}")
            if json_mode:
                print_json({"scenario": str(path), "passed": False, "error": str(exc)})
            return 1
        seconds = time.monotonic() - started
        say(f"passed ({seconds:.1f} s)")
        if json_mode:
            print_json({"scenario": str(path), "passed": True, "seconds": round(seconds, 2)})
    return 0
