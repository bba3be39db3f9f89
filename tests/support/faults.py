"""Stacks of their own for fault tests, a steady message load, and live phones.

Used as a pytest plugin (tests/conftest.py). A fault test kills or freezes processes, so
it never touches the session's: it gets

- `fault_cluster` (module): a throw-away PostgreSQL cluster of its own, with a migrated
  template database; every stack gets a fresh copy of it (`CREATE DATABASE ... TEMPLATE`,
  a fraction of a second, instead of migrating again).
- `fault_stack` (function): a `FaultStack`: that cluster, a database of its own, its own
  broker of the suite's kind (`new_broker`, tests/support/brokers.py: Mosquitto from
  `broker/mosquitto.conf` or a RabbitMQ node; its own ports and persistence directory),
  its own relay and granian processes (`tests.support.stack.ProcessStack`).

The world a fault hits (`ChatWorld`): four users signed up over HTTP, two direct chats
and a group of three, and each user's phone, a paho client with a persistent session
that subscribes to its user topic on every (re)connect, as the README prescribes.
`SteadyLoad` posts messages at a fixed rate from threads, with a `client_id` each,
round-robin over the chats and their members, and records every answer.
`ChatWorld.check` then holds the results against the README's promise: every accepted
message reached every member, live or through the catch-up (`POST /chats/sync/`), and
what arrived live was in per-chat order.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.postgres import PostgresCluster, sql
from tests.support.stack import ProcessStack, call, migrated_database, wait_until

PASSWORD = "fault tolerant 123"
TEMPLATE_DB = "fault_template"


# --- the stack ------------------------------------------------------------------------------


class FaultCluster:
    """A cluster with a migrated template database; `new_database()` copies it."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self._names = count(1)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.cluster.url(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        name = f"fault_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        return name


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory) -> Iterator[FaultCluster]:
    with PostgresCluster() as cluster:
        migrated_database(cluster, TEMPLATE_DB, data_dir=tmp_path_factory.mktemp("fault-migrate"))
        yield FaultCluster(cluster)


class FaultStack:
    """One test's stack: its database in `fault_cluster`, its broker, relay and web server."""

    def __init__(self, cluster: FaultCluster, dbname: str, broker,
                 processes: ProcessStack) -> None:
        self.cluster = cluster
        self.pg = cluster.cluster
        self.dbname = dbname
        self.database_url = cluster.cluster.url(dbname)
        self.broker = broker
        self.processes = processes
        self.relay = processes.relay
        self.http = processes.http
        self.url = processes.url

    def start_relay(self) -> None:
        self.processes.start_relay()

    def health(self) -> tuple[int, dict]:
        return self.processes.health()

    def sql(self, query: str, params: tuple | list = ()) -> list[tuple]:
        """Run one statement in this stack's database (autocommit); its rows, if any."""
        return sql(self.database_url, query, params)

    def logs(self) -> str:
        return (f"--- relay\n{self.relay.log_tail(60)}\n--- web\n{self.http.log_tail(30)}"
                f"\n--- postgres\n{self.pg.log_tail(15)}")


@contextlib.contextmanager
def own_stack(cluster: FaultCluster, broker, broker_dir, workdir, *, env: dict[str, str] | None = None,
              before_start=None) -> Iterator[FaultStack]:
    """A FaultStack on a fresh database of `cluster` and on `broker` (not started: it is
    started here, and stopped and its `broker_dir` removed afterwards), its processes with
    `env` added; `before_start(processes)`, if given, runs once the broker is up and
    before the stack's own processes start (extra processes of the same environment)."""
    dbname = cluster.new_database()
    processes = None
    try:
        broker.start()
        processes = ProcessStack(database_url=cluster.cluster.url(dbname), broker=broker, workdir=workdir,
                                 env=env)
        if before_start is not None:
            before_start(processes)
        processes.start()
        yield FaultStack(cluster, dbname, broker, processes)
    finally:
        if processes is not None:
            processes.stop()
        broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)


@pytest.fixture
def fault_stack(fault_cluster, new_broker, tmp_path) -> Iterator[FaultStack]:
    """A stack of the test's own: kill, freeze and restart anything in it."""
    broker, broker_dir = new_broker("chat-fault-")
    with own_stack(fault_cluster, broker, broker_dir, tmp_path) as stack:
        yield stack


# --- HTTP ---------------------------------------------------------------------------------


@dataclass
class Account:
    id: int
    username: str
    token: str
    mqtt: dict


def signup(url: str, username: str) -> Account:
    status, body = call(f"{url}/accounts/signup/", "POST", {"username": username, "password": PASSWORD})
    assert status == 201, (status, body)
    return Account(body["id"], username, body["token"], body["mqtt"])


# --- phones ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() on receipt
    event: dict


class LivePhone:
    """A user's phone: paho, MQTT 3.1.1 with a persistent session (clean_session=False),
    reconnecting by itself, subscribing to its user topic on every connect. Records every
    event with its arrival time."""

    def __init__(self, account: Account, keepalive: int = 60) -> None:
        self.account = account
        mqtt = account.mqtt
        self.topic = mqtt["user_topic"]
        self._lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.connections = 0
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=mqtt["client_id"],
                                  protocol=paho.MQTTv311, clean_session=False)
        self.client.username_pw_set(mqtt["username"], mqtt["password"])
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_socket_open = _nodelay
        self.client.connect_async(mqtt["host"], mqtt["port"], keepalive=keepalive)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def messages(self) -> list[tuple[float, dict]]:
        """(arrival time, message object) of every `message.created`, duplicates included."""
        with self._lock:
            return [(a.at, a.event["data"]) for a in self.arrivals if a.event.get("type") == "message.created"]

    def has(self, message_id: int) -> bool:
        return any(m["id"] == message_id for _, m in self.messages())

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.value == 0:
            with self._lock:
                self.connections += 1
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if reason_codes[0].value < 0x80:
            self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        arrival = Arrival(time.monotonic(), json.loads(message.payload))
        with self._lock:
            self.arrivals.append(arrival)


def _nodelay(client, userdata, sock) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --- the load ---------------------------------------------------------------------------


@dataclass
class Chat:
    id: int
    members: list[Account]


@dataclass
class Sent:
    chat: int
    author: int
    client_id: str
    started: float  # time.monotonic() when the request was sent
    status: int
    body: dict | None  # the answer (the message when accepted); None without one

    @property
    def message(self) -> dict | None:
        return self.body if self.accepted else None

    @property
    def accepted(self) -> bool:
        return self.status in (200, 201)


class SteadyLoad:
    """`rate` messages/s in total from `threads` threads, each on its own schedule (open
    loop: a slow answer delays only that thread's next message). Message k goes to chat
    k % len(chats), from its members in turn."""

    def __init__(self, url: str, chats: list[Chat], *, rate: float = 40, threads: int = 2) -> None:
        self.url, self.chats, self.rate, self.threads = url, chats, rate, threads
        self.tag = secrets.token_hex(3)
        self._lock = threading.Lock()
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._numbers = count()

    def start(self) -> SteadyLoad:
        for t in range(self.threads):
            worker = threading.Thread(target=self._run, args=(t,), name=f"load-{t}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self, thread: int) -> None:
        period = self.threads / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                k = next(self._numbers)
            chat = self.chats[k % len(self.chats)]
            author = chat.members[(k // len(self.chats)) % len(chat.members)]
            self.send(chat, author, f"load {self.tag} {k}")
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))

    def send(self, chat: Chat, author: Account, content: str, client_id: str | None = None) -> Sent:
        client_id = client_id or f"{self.tag}-{secrets.token_hex(6)}"
        started = time.monotonic()
        status, body = call(f"{self.url}/chats/{chat.id}/messages/", "POST",
                            {"content": content, "client_id": client_id}, author.token)
        sent = Sent(chat.id, author.id, client_id, started, status, body)
        with self._lock:
            self.sent.append(sent)
        return sent

    def records(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def accepted(self) -> list[Sent]:
        return [s for s in self.records() if s.accepted]

    def failed(self) -> list[Sent]:
        return [s for s in self.records() if not s.accepted]

    def wait_accepted(self, more: int, timeout: float = 20) -> None:
        """Wait until `more` messages more than now were accepted."""
        target = len(self.accepted()) + more
        wait_until(lambda: len(self.accepted()) >= target, timeout, f"{more} more accepted messages")

    def wait_failed(self, more: int, timeout: float = 20) -> None:
        target = len(self.failed()) + more
        wait_until(lambda: len(self.failed()) >= target, timeout, f"{more} more refused messages")


# --- the world and its checks ---------------------------------------------------------------


@dataclass
class Outcome:
    """What `ChatWorld.check` found, per phone (username)."""

    accepted: int
    refused: dict[int, int]  # status -> count (0: no answer)
    missing: dict[str, list[int]] = field(default_factory=dict)  # accepted, neither live nor caught up
    unexpected: dict[str, list[int]] = field(default_factory=dict)  # in the chats but never accepted
    out_of_order: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # (chat, seq, after seq)
    caught_up: dict[str, int] = field(default_factory=dict)  # how many only the catch-up gave
    duplicates: dict[str, int] = field(default_factory=dict)  # live copies of an id already seen


class ChatWorld:
    """Alice, Bob, Carol and Dave; direct chats alice-bob and carol-dave, and the group
    alice+bob+carol; every user's phone live on its user topic."""

    def __init__(self, stack: FaultStack) -> None:
        self.stack = stack
        url = stack.url
        tag = secrets.token_hex(3)
        alice, bob, carol, dave = (signup(url, f"{name}-{tag}") for name in ("alice", "bob", "carol", "dave"))
        self.users = [alice, bob, carol, dave]
        self.chats = [
            self._chat(alice, [bob]),
            self._chat(carol, [dave]),
            self._chat(alice, [bob, carol], name="faulty"),
        ]
        # Phones connect after the chats exist: a membership change disconnects the
        # member's live connections (Mosquitto 2.0.11's dynamic security).
        self.phones = {user.id: LivePhone(user) for user in self.users}
        for phone in self.phones.values():
            assert phone.subscribed.wait(10), f"{phone.account.username} not subscribed"

    def _chat(self, owner: Account, others: list[Account], name: str | None = None) -> Chat:
        body = {"members": [u.id for u in others], **({"name": name} if name else {})}
        status, chat = call(f"{self.stack.url}/chats/", "POST", body, owner.token)
        assert status == 201, (status, chat)
        return Chat(chat["id"], [owner, *others])

    def close(self) -> None:
        for phone in self.phones.values():
            phone.close()

    def live_again_after(self, fault_end: float, load: SteadyLoad, within: float,
                         chat: Chat | None = None) -> dict[str, float | None]:
        """Per phone, seconds from `fault_end` to the arrival of the first message POSTed
        after it (None: none within `within` seconds). Polls until every phone has one.
        `chat`: that chat's messages and its members' phones only."""
        phones = list(self.phones.values()) if chat is None else [self.phones[m.id] for m in chat.members]

        def first_arrivals() -> dict[str, float | None]:
            after = {s.message["id"] for s in load.accepted()
                     if s.started >= fault_end and (chat is None or s.chat == chat.id)}
            out = {}
            for phone in phones:
                times = [at for at, m in phone.messages() if m["id"] in after]
                out[phone.account.username] = round(min(times) - fault_end, 3) if times else None
            return out

        deadline = fault_end + within
        while time.monotonic() < deadline and None in first_arrivals().values():
            time.sleep(0.02)
        return first_arrivals()

    def settle(self, load: SteadyLoad, timeout: float = 20) -> None:
        """Send one last message per chat (after the load stopped) and wait until each
        member has it live: per-chat order puts it after everything else that will come."""
        markers = []
        for chat in self.chats:
            sent = load.send(chat, chat.members[0], "marker")
            assert sent.accepted, (sent.status, sent.body)
            markers.append((chat, sent.message["id"]))
        for chat, mid in markers:
            for member in chat.members:
                phone = self.phones[member.id]
                try:
                    wait_until(lambda: phone.has(mid), timeout, f"marker {mid} at {member.username}")
                except AssertionError:
                    raise AssertionError(f"marker {mid} of chat {chat.id} never reached "
                                         f"{member.username} live\n{self.stack.logs()}") from None

    def catch_up(self, phone: LivePhone, chats: list[Chat]) -> list[dict]:
        """The README's catch-up: for each chat the highest version the phone holds
        without a gap in seq (0 if none), `POST /chats/sync/`, paged while has_more."""
        live = {}
        for _, message in phone.messages():
            live.setdefault(message["chat"], {})[message["seq"]] = message
        versions = {}
        for chat in chats:
            by_seq, seq, version = live.get(chat.id, {}), 1, 0
            while seq in by_seq:
                version = by_seq[seq]["version"]
                seq += 1
            versions[str(chat.id)] = version
        fetched = []
        while versions:
            status, body = call(f"{self.stack.url}/chats/sync/", "POST", {"chats": versions}, phone.account.token)
            assert status == 200, (status, body)
            versions = {}
            for changed in body["changed"]:
                fetched += changed["messages"]
                if changed["has_more"]:
                    versions[str(changed["id"])] = changed["version"]
        return fetched

    def check(self, load: SteadyLoad, *, allow_unaccepted: bool = False) -> Outcome:
        """Every accepted message against every member's phone (live + catch-up)."""
        records = load.records()
        accepted = [s for s in records if s.accepted]
        refused: dict[int, int] = {}
        for s in records:
            if not s.accepted:
                refused[s.status] = refused.get(s.status, 0) + 1
        outcome = Outcome(accepted=len(accepted), refused=refused)
        for user in self.users:
            phone = self.phones[user.id]
            chats = [c for c in self.chats if any(m.id == user.id for m in c.members)]
            chat_ids = {c.id for c in chats}
            expected = {s.message["id"] for s in accepted if s.chat in chat_ids}
            seen, top, disorder, dups = set(), {}, [], 0
            for _, m in phone.messages():
                if m["chat"] not in chat_ids:
                    continue
                if m["id"] in seen:
                    dups += 1
                    continue
                seen.add(m["id"])
                if m["seq"] <= top.get(m["chat"], 0):
                    disorder.append((m["chat"], m["seq"], top[m["chat"]]))
                top[m["chat"]] = max(top.get(m["chat"], 0), m["seq"])
            fetched = {m["id"] for m in self.catch_up(phone, chats)}
            held = seen | fetched
            name = user.username
            if expected - held:
                outcome.missing[name] = sorted(expected - held)
            if held - expected and not allow_unaccepted:
                outcome.unexpected[name] = sorted(held - expected)
            if disorder:
                outcome.out_of_order[name] = disorder
            outcome.caught_up[name] = len((expected - seen) & fetched)
            outcome.duplicates[name] = dups
        return outcome
