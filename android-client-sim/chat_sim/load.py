"""`chat-sim load`: many simulated phones against a running stack.

Phases: users (signed up once, then reused from a cache in the profile home), chats
(direct chats for --group-size 2, else groups), phones (one MQTT connection each, hosted
by receiver processes, see `chat_sim.swarm`), --settle seconds for the server to absorb
the connect burst (each phone publishes its presence), then --duration seconds of sending at
--rate messages/s (open loop: each message has its due time; when every connection is
busy and the short queue is full, the message is counted as skipped), then up to --grace
seconds for the last copies.

What it reports:
- accepted: 2xx answers per second of sending; errors by status; skipped sends.
  With --closed-loop there is no schedule: each of the --connections sends its next
  message as soon as the last one is answered, and nothing is skipped.
- POST latency: request written -> answer read, accepted messages only.
- POST -> MQTT receipt latency: request written -> copy received, over every copy that
  reached every member's phone (the author's own phone included: the server publishes
  to every member's user topic).
- lost: (accepted message, member) pairs never received by that member's phone;
  duplicated: a copy of an id the phone already had; out of order: a copy whose seq is
  below one the phone already received in that chat. All three must be 0.
- with --burst-phones N: N more phones (users of their own, in no chat) connect all at
  once --burst-at seconds into sending, each publishing its presence like any phone; the
  receipt latency of messages sent in the --burst-window seconds from then is reported
  beside that of the same length of time just before, with the ratio of their p99.
- with --receiver mosquitto_sub: each phone is a `mosquitto_sub` process (its own
  connection, credentials, persistent session, QoS 1, Last Will) instead of a paho client,
  so that a copy costs the load generator C instead of Python (chat_sim.subswarm); the
  phones then publish no presence of their own.
- with --mqtt-ports P1,P2,...: phone n connects to port P[n mod len] of the server's MQTT
  host instead of the one the server hands out (phones spread over a broker cluster's
  nodes: a port listed twice takes twice the phones).
- with --offline: no phone connects (every member is away: nothing to receive over MQTT).
- with --push-sink URL (implies --offline): every user registers a push token first, and
  the pushes are counted at that stand-in FCM server (`chat-sim fcm-sink`, `GET /log`):
  pushes received of those expected (one per message and member but its author), pushes
  per second, and the push latency, the message's `created_at` (in its transaction, just
  before the commit) -> the sink received it; missing: not there within --grace.
Exit status 1 when any of the three (or a missing push) is not 0, 2 when the run could
not be set up.
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import multiprocessing
import os
import secrets
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from chat_sim.async_http import AsyncHttp, HttpError
from chat_sim.output import print_json
from chat_sim.profiles import write_private_json
from chat_sim.swarm import C_DELIVERED, C_READY, N_COUNTERS, PhoneSpec, receiver_main

SETUP_CONNECTIONS = 8
# A connect burst costs the broker and this process CPU that the first messages would be
# measured against: by default sending starts once it has passed (`--settle 0`: at once).
SETTLE_BASE, SETTLE_PER_PHONE = 2.0, 0.004
# Copies one receiver process can take per second with room to spare (paho parses and
# acknowledges each one in Python: ~40-60 us).
DELIVERIES_PER_RECEIVER = 6000


class LoadError(Exception):
    """The run could not be set up (refused signups, phones that cannot connect...)."""


@dataclass
class LoadConfig:
    server: str
    users: int = 20
    chats: int = 10
    group_size: int = 2
    rate: float = 50.0
    duration: float = 10.0
    grace: float = 10.0
    connections: int = 16
    closed_loop: bool = False  # every connection sends again as soon as answered (rate ignored)
    receivers: int = 0
    receiver: str = "paho"  # or "mosquitto_sub": each phone a C client (chat_sim.subswarm)
    settle: float | None = None  # None: SETTLE_BASE + SETTLE_PER_PHONE x users
    cache_dir: Path = Path.home() / ".chat-sim" / "load"
    user_prefix: str = "load"
    burst_phones: int = 0  # extra phones connecting at once, burst_at seconds into sending
    burst_at: float = 0.0
    burst_window: float = 5.0  # seconds of sending compared: before the burst / from it on
    offline: bool = False  # no phones: every member is away
    push_sink: str | None = None  # the fcm-sink the server pushes to (implies offline)
    mqtt_ports: tuple[int, ...] = ()  # phone n connects to mqtt_ports[n % len] (a broker cluster)
    phones_timeout: float | None = None  # None: 30 s + 20 ms per phone to connect and subscribe

    def check(self) -> None:
        if self.push_sink:
            self.offline = True
        if self.group_size < 2 or self.group_size > self.users:
            raise LoadError("--group-size must be at least 2 and at most --users")
        if self.chats < 1 or self.rate <= 0 or self.duration <= 0 or self.connections < 1:
            raise LoadError("--chats, --rate, --duration and --connections must be positive")
        if self.settle is not None and self.settle < 0:
            raise LoadError("--settle must not be negative")
        if any(not 0 < port < 65536 for port in self.mqtt_ports):
            raise LoadError("--mqtt-ports must be TCP ports")
        if self.phones_timeout is not None and self.phones_timeout <= 0:
            raise LoadError("--phones-timeout must be positive")
        if self.burst_phones < 0:
            raise LoadError("--burst-phones must not be negative")
        if self.burst_phones and not (
            self.burst_window > 0 and self.burst_window <= self.burst_at <= self.duration - self.burst_window
        ):
            raise LoadError("a burst needs --burst-window seconds of sending before --burst-at and after it")


@dataclass
class User:
    name: str
    id: int
    token: str
    mqtt: dict


@dataclass
class Chat:
    id: int
    members: list[User]


def percentiles(samples: list[float]) -> dict:
    """p50/p95/p99/max in milliseconds (nearest rank), or Nones without samples."""
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": round(ordered[-1] * 1000, 2)}


class Load:
    def __init__(self, config: LoadConfig, *, say) -> None:
        config.check()
        self.config = config
        self.say = say
        parts = urlsplit(config.server if "://" in config.server else f"http://{config.server}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.tag = "lt" + secrets.token_hex(4)
        self.timings: dict[str, float] = {}
        self.window: dict[str, float] = {}  # when sending started and ended (epoch seconds)
        self.accepted: dict[int, list[int]] = defaultdict(list)
        self.post_latencies: list[float] = []
        self.errors: Counter = Counter()
        self.sent = self.skipped = 0
        self.receivers: list[tuple] = []  # (process, connection, counters)
        self.burst_receivers: list[tuple] = []  # the same, for the burst's phones
        self.burst: dict = {}
        self.created: dict[int, float] = {}  # message id -> its created_at (--push-sink)
        self.pushes: dict[int, list[float]] = defaultdict(list)  # message id -> arrival times
        self._sink_next = 0

    # --- setup --------------------------------------------------------------------------

    async def _parallel(self, items: list, work) -> list:
        """`await work(http, item)` for every item over SETUP_CONNECTIONS connections,
        results in the items' order."""
        results: list = [None] * len(items)
        queue = list(enumerate(items))

        async def worker() -> None:
            http = AsyncHttp(self.host, self.port)
            try:
                while queue:
                    index, item = queue.pop()
                    results[index] = await work(http, item)
            finally:
                http.close()

        await asyncio.gather(*(worker() for _ in range(SETUP_CONNECTIONS)))
        return results

    async def users(self) -> list[User]:
        """The run's users: cached tokens still valid, else login, else signup."""
        started = time.monotonic()
        cache_path = self.config.cache_dir / f"{self.host}_{self.port}.json"
        cache = _read_json(cache_path) or {}
        password = cache.setdefault("password", "load-" + secrets.token_urlsafe(16))
        known = cache.setdefault("users", {})
        names = [f"{self.config.user_prefix}-{i}" for i in range(self.config.users + self.config.burst_phones)]

        done = [0]

        async def ensure(http: AsyncHttp, name: str) -> User:
            user = await sign_in(http, name)
            done[0] += 1
            if done[0] % 200 == 0 and done[0] < len(names):
                self.say(f"users: {done[0]} of {len(names)} signed in ({time.monotonic() - started:.1f} s)")
            return user

        async def sign_in(http: AsyncHttp, name: str) -> User:
            entry = known.get(name)
            if entry:
                status, me = await http.request("GET", "/accounts/me/", token=entry["token"])
                if status == 200:
                    return User(name, me["id"], entry["token"], me["mqtt"])
            credentials = {"username": name, "password": password}
            status, session = await http.request("POST", "/accounts/login/", credentials)
            if status == 401:
                status, session = await http.request("POST", "/accounts/signup/", credentials)
            if status == 429:
                raise LoadError("signup/login throttled (429): start the server with a higher "
                                "AUTH_THROTTLE_RATE for load tests, e.g. AUTH_THROTTLE_RATE=100000/minute")
            if status == 409:
                raise LoadError(f"user {name} exists with another password: use another --user-prefix")
            if status not in (200, 201):
                raise LoadError(f"cannot sign in {name}: {status} {session}")
            return User(name, session["id"], session["token"], session["mqtt"])

        try:
            users = await self._parallel(names, ensure)
        except HttpError as exc:
            raise LoadError(f"the server does not answer: {exc}") from None
        for user in users:
            known[user.name] = {"token": user.token}
        if self.config.mqtt_ports:
            # By the user's number, not its place in this run: load-<n> lands on the same
            # node in every run (its persistent session is there), and so does a burst phone.
            for user in users:
                number = int(user.name.rsplit("-", 1)[1])
                user.mqtt = {**user.mqtt, "port": self.config.mqtt_ports[number % len(self.config.mqtt_ports)]}
        write_private_json(cache_path, cache)
        self.timings["users_s"] = time.monotonic() - started
        return users

    async def chats(self, users: list[User]) -> list[Chat]:
        """Chat j has the group_size users from j * group_size on (wrapping around)."""
        started = time.monotonic()
        size, n = self.config.group_size, len(users)
        plans = [[users[(j * size + k) % n] for k in range(size)] for j in range(self.config.chats)]

        async def create(http: AsyncHttp, members: list[User]) -> Chat:
            body = {"members": [m.id for m in members[1:]]}
            if size > 2:
                body["name"] = f"{self.tag} load group"
            status, chat = await http.request("POST", "/chats/", body, token=members[0].token)
            if status not in (200, 201):
                raise LoadError(f"cannot create a chat: {status} {chat}")
            return Chat(chat["id"], members)

        created = await self._parallel(plans, create)
        # Direct chats are one per pair: two plans of the same pair are one chat.
        unique = list({chat.id: chat for chat in created}.values())
        self.timings["chats_s"] = time.monotonic() - started
        return unique

    async def register_push_tokens(self, users: list[User]) -> None:
        """Each user's device registers a push token of this run with the sink's server."""
        started = time.monotonic()

        async def register(http: AsyncHttp, user: User) -> None:
            body = {"token": f"{self.tag}-{user.id}"}
            status, answer = await http.request("PUT", "/accounts/me/push/", body, token=user.token)
            if status != 200:
                raise LoadError(f"cannot register a push token: {status} {answer}")

        await self._parallel(users, register)
        self.timings["tokens_s"] = time.monotonic() - started

    def collect_pushes(self) -> None:
        """Read what the sink received since the last call; keep this run's message pushes."""
        with urllib.request.urlopen(f"{self.config.push_sink.rstrip('/')}/log?after={self._sink_next}",
                                    timeout=10) as response:
            log = json.loads(response.read())
        self._sink_next = log["next"]
        for entry in log["pushes"]:
            message = entry["message"]
            data = message.get("data", {})
            if data.get("type") == "message" and message.get("token", "").startswith(self.tag + "-"):
                self.pushes[int(data["message_id"])].append(entry["received_at"])

    def start_phones(self, users: list[User], chats: list[Chat]) -> None:
        """One receiver process per DELIVERIES_PER_RECEIVER expected copies/s, at most
        one per core; every user's phone connected and subscribed before this returns."""
        started = time.monotonic()
        memberships = defaultdict(list)
        for chat in chats:
            for member in chat.members:
                memberships[member.id].append(chat.id)
        count = self.config.receivers or min(
            os.cpu_count() or 1, max(1, math.ceil(self.config.rate * self.config.group_size / DELIVERIES_PER_RECEIVER))
        )
        count = min(count, len(users))
        target = receiver_main
        if self.config.receiver == "mosquitto_sub":
            from chat_sim.subswarm import receiver_main as target  # the copies cost C, not Python

            count = 1
        context = multiprocessing.get_context("spawn")
        for r in range(count):
            specs = [PhoneSpec(u.id, u.mqtt, memberships[u.id]) for u in users[r::count]]
            parent, child = context.Pipe()
            counters = context.Array("q", N_COUNTERS, lock=False)
            process = context.Process(target=target, args=(child, specs, self.tag, counters),
                                      name=f"chat-sim-receiver-{r}", daemon=True)
            process.start()
            self.receivers.append((process, parent, counters))
        timeout = self.config.phones_timeout
        deadline = time.monotonic() + (30 + len(users) / 50 if timeout is None else timeout)
        while self.total(C_READY) < len(users):
            if time.monotonic() > deadline:
                raise LoadError(f"only {self.total(C_READY)} of {len(users)} phones connected and subscribed")
            if not all(process.is_alive() for process, _, _ in self.receivers):
                raise LoadError("a receiver process died")
            time.sleep(0.05)
        self.timings["phones_s"] = time.monotonic() - started

    def prepare_burst(self, users: list[User]) -> None:
        """Start the burst's receiver processes, their phones held back until `_burst`."""
        context = multiprocessing.get_context("spawn")
        count = min(os.cpu_count() or 1, len(users))
        for r in range(count):
            specs = [PhoneSpec(u.id, u.mqtt, []) for u in users[r::count]]
            parent, child = context.Pipe()
            counters = context.Array("q", N_COUNTERS, lock=False)
            process = context.Process(target=receiver_main, args=(child, specs, self.tag, counters, True),
                                      name=f"chat-sim-burst-{r}", daemon=True)
            process.start()
            self.burst_receivers.append((process, parent, counters))

    async def _burst(self, started: float) -> None:
        """At --burst-at, every burst phone connects at once; note when all are ready."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, started + self.config.burst_at - loop.time()))
        self.burst["started"] = time.time()
        for _, conn, _ in self.burst_receivers:
            conn.send(("connect", None))
        self.say(f"burst: {self.config.burst_phones} phones connecting")
        while self.total(C_READY, self.burst_receivers) < self.config.burst_phones:
            await asyncio.sleep(0.02)
        self.burst["ready_s"] = time.time() - self.burst["started"]
        self.say(f"burst: {self.config.burst_phones} phones ready in {self.burst['ready_s']:.1f} s")

    def total(self, index: int, receivers: list[tuple] | None = None) -> int:
        return sum(counters[index] for _, _, counters in (self.receivers if receivers is None else receivers))

    def stop_phones(self) -> None:
        everyone = self.receivers + self.burst_receivers
        for process, conn, _ in everyone:
            if process.is_alive():
                try:
                    conn.send(("stop", None))
                except (BrokenPipeError, OSError):
                    pass
        for process, _, _ in everyone:
            process.join(10)
            if process.is_alive():
                process.kill()

    # --- sending ------------------------------------------------------------------------

    async def send(self, chats: list[Chat]) -> None:
        config = self.config
        queue: asyncio.Queue = asyncio.Queue(maxsize=config.connections)
        workers = [asyncio.create_task(self._sender(queue, chats)) for _ in range(config.connections)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.window["sending_from"] = time.time()
        end = started + config.duration
        progress = asyncio.create_task(self._progress(chats, started))
        burst = asyncio.create_task(self._burst(started)) if self.burst_receivers else None
        due = 0
        if config.closed_loop:
            # No schedule: the senders take the next message as soon as they are free.
            while loop.time() < end:
                await queue.put(due)
                self.sent += 1
                due += 1
        while not config.closed_loop and (now := loop.time()) < end:
            while due < (now - started) * config.rate:
                try:
                    queue.put_nowait(due)
                    self.sent += 1
                except asyncio.QueueFull:
                    self.skipped += 1
                due += 1
            await asyncio.sleep(max(0.0, min(started + due / config.rate, end) - loop.time()))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        self.timings["sending_s"] = loop.time() - started
        self.window["sending_until"] = time.time()
        await self._grace(chats)
        progress.cancel()
        if burst is not None and not burst.done():
            burst.cancel()
            self.say("burst: not every burst phone was ready by the end")

    async def _sender(self, queue: asyncio.Queue, chats: list[Chat]) -> None:
        http = AsyncHttp(self.host, self.port)
        try:
            while (k := await queue.get()) is not None:
                chat = chats[k % len(chats)]
                author = chat.members[(k // len(chats)) % len(chat.members)]
                sent = time.time()
                # The content carries the run tag and the send time: receivers measure
                # the receipt latency from it.
                body = {"content": f"{self.tag} {sent:.6f} {k}", "client_id": f"{self.tag}-{k}"}
                try:
                    status, message = await http.request("POST", f"/chats/{chat.id}/messages/", body, author.token)
                except HttpError:
                    self.errors["no answer"] += 1
                    continue
                if status in (200, 201):
                    self.post_latencies.append(time.time() - sent)
                    self.accepted[chat.id].append(message["id"])
                    if self.config.push_sink:
                        self.created[message["id"]] = datetime.fromisoformat(message["created_at"]).timestamp()
                else:
                    self.errors[str(status)] += 1
        finally:
            http.close()

    def expected(self, chats: list[Chat]) -> int:
        """Copies the phones should receive (none without phones)."""
        if self.config.offline:
            return 0
        return sum(len(self.accepted.get(chat.id, ())) * len(chat.members) for chat in chats)

    def pushes_expected(self, chats: list[Chat]) -> int:
        """Pushes the sink should receive: one per message and member but its author."""
        if not self.config.push_sink:
            return 0
        return sum(len(self.accepted.get(chat.id, ())) * (len(chat.members) - 1) for chat in chats)

    def pushes_received(self) -> int:
        return sum(len(times) for times in self.pushes.values())

    async def _grace(self, chats: list[Chat]) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.config.grace:
            if self.config.push_sink:
                await asyncio.to_thread(self.collect_pushes)
                if self.pushes_received() >= self.pushes_expected(chats):
                    break
                await asyncio.sleep(0.25)
            elif self.total(C_DELIVERED) < self.expected(chats):
                await asyncio.sleep(0.05)
            elif await asyncio.to_thread(self.missing):
                # The count is a hint (mosquitto_sub's counts every line with the run's
                # tag, a message.updated's too): one copy may still be missing.
                await asyncio.sleep(0.5)
            else:
                break
        self.timings["waited_s"] = time.monotonic() - started

    async def _progress(self, chats: list[Chat], started: float) -> None:
        loop = asyncio.get_running_loop()
        last = 0
        while True:
            await asyncio.sleep(1.0)
            accepted = len(self.post_latencies)
            self.say(f"[{loop.time() - started:5.1f}s] accepted {accepted} (+{accepted - last}/s), "
                     f"errors {sum(self.errors.values())}, skipped {self.skipped} | copies received "
                     f"{self.total(C_DELIVERED)}/{self.expected(chats)}")
            last = accepted

    # --- the report ---------------------------------------------------------------------

    def _receiver_reports(self) -> list[dict]:
        """Each receiver process's report on the messages accepted so far."""
        accepted = dict(self.accepted)
        for _, conn, _ in self.receivers:
            conn.send(("report", accepted))
        return [conn.recv()[1] for _, conn, _ in self.receivers]

    def missing(self) -> int:
        """Copies of accepted messages that no phone of theirs has received yet (exact:
        the receivers' own check, by message id)."""
        return sum(part["lost"] for part in self._receiver_reports())

    def report(self, users: list[User], chats: list[Chat]) -> dict:
        parts = self._receiver_reports()
        latencies, sent_at = [], []
        for part in parts:
            latencies += _floats(part.pop("latencies"))
            sent_at += _floats(part.pop("sent_at"))
        n_accepted = len(self.post_latencies)
        sending = self.timings.get("sending_s", self.config.duration)
        return {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()},
            "phones": len(users),
            "chats": len(chats),
            "receiver_processes": len(self.receivers),
            "sent": self.sent,
            "skipped": self.skipped,
            "accepted": n_accepted,
            "accepted_per_s": round(n_accepted / sending, 1),
            "errors": dict(self.errors),
            "post_ms": percentiles(self.post_latencies),
            "receipt_ms": percentiles(latencies),
            "copies_expected": self.expected(chats),
            "copies_received": sum(p["delivered"] for p in parts),
            "lost": sum(p["lost"] for p in parts),
            "duplicated": sum(p["duplicates"] for p in parts),
            "out_of_order": sum(p["out_of_order"] for p in parts),
            "reconnects": sum(p["reconnects"] for p in parts),
            "lost_examples": [e for p in parts for e in p["lost_examples"]][:10],
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "window": self.window,
            **({"burst": self.burst_report(sent_at, latencies)} if self.config.burst_phones else {}),
            **({"push": self.push_report(chats)} if self.config.push_sink else {}),
        }

    def push_report(self, chats: list[Chat]) -> dict:
        """Pushes of this run's messages at the sink: how many, how fast, how late."""
        latencies = [
            arrived - self.created[mid] for mid, times in self.pushes.items() if mid in self.created for arrived in times
        ]
        arrivals = sorted(t for times in self.pushes.values() for t in times)
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        received, expected = self.pushes_received(), self.pushes_expected(chats)
        return {
            "expected": expected,
            "received": received,
            "missing": max(0, expected - received),
            "per_s": round(received / span, 1) if span else None,
            "latency_ms": percentiles(latencies),
        }

    def burst_report(self, sent_at: list[float], latencies: list[float]) -> dict:
        """Receipt latency of what was sent in the window from the burst on, against the
        window just before it."""
        config, started = self.config, self.burst.get("started")
        report = {"phones": config.burst_phones, "at_s": config.burst_at, "window_s": config.burst_window,
                  "ready": self.total(C_READY, self.burst_receivers),
                  "ready_s": round(self.burst["ready_s"], 2) if "ready_s" in self.burst else None}
        if started is None:
            return {**report, "without_ms": percentiles([]), "during_ms": percentiles([]), "p99_ratio": None}
        window = config.burst_window
        without = [lat for sent, lat in zip(sent_at, latencies, strict=True) if started - window <= sent < started]
        during = [lat for sent, lat in zip(sent_at, latencies, strict=True) if started <= sent < started + window]
        report["without_ms"], report["during_ms"] = percentiles(without), percentiles(during)
        report["copies"] = {"without": len(without), "during": len(during)}
        p99_without, p99_during = report["without_ms"]["p99"], report["during_ms"]["p99"]
        report["p99_ratio"] = round(p99_during / p99_without, 2) if p99_without and p99_during else None
        return report


def _floats(raw: bytes) -> list[float]:
    samples = array.array("d")
    samples.frombytes(raw)
    return samples.tolist()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def human(report: dict) -> str:
    c = report["config"]

    def ms(p: dict) -> str:
        if p["p50"] is None:
            return "no samples"
        return f"p50 {p['p50']:.1f} ms  p95 {p['p95']:.1f} ms  p99 {p['p99']:.1f} ms  max {p['max']:.0f} ms"

    errors = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"
    t = report["timings_s"]
    return "\n".join([
        f"load: {report['phones']} phones ({report['receiver_processes']} receiver processes), "
        f"{report['chats']} chats of {c['group_size']}, target {c['rate']:g} msg/s for {c['duration']:g} s",
        f"  accepted     {report['accepted']} messages, {report['accepted_per_s']} msg/s "
        f"(errors: {errors}; skipped: {report['skipped']})",
        f"  POST         {ms(report['post_ms'])}",
        f"  POST->MQTT   {ms(report['receipt_ms'])}",
        f"  copies       {report['copies_received']} received of {report['copies_expected']} expected: "
        f"lost {report['lost']} (not received within --grace), duplicated {report['duplicated']}, "
        f"out of order {report['out_of_order']}",
        f"  setup        users {t.get('users_s', 0):.1f} s, chats {t.get('chats_s', 0):.1f} s, "
        f"phones {t.get('phones_s', 0):.1f} s; waited {t.get('waited_s', 0):.1f} s for the last copies",
    ] + ([f"  lost e.g.    {report['lost_examples'][:3]}"] if report["lost"] else [])
      + ([_human_burst(report["burst"], ms)] if "burst" in report else [])
      + ([_human_push(report["push"], ms)] if "push" in report else []))


def _human_push(push: dict, ms) -> str:
    return "\n".join([
        f"  pushes       {push['received']} received of {push['expected']} expected (missing {push['missing']}), "
        f"{push['per_s']}/s",
        f"  commit->push {ms(push['latency_ms'])}",
    ])


def _human_burst(burst: dict, ms) -> str:
    ready = "never all ready" if burst["ready_s"] is None else f"all ready in {burst['ready_s']:.1f} s"
    return "\n".join([
        f"  burst        {burst['phones']} phones connecting at {burst['at_s']:g} s ({ready}); "
        f"POST->MQTT over {burst['window_s']:g} s windows:",
        f"    without    {ms(burst['without_ms'])}",
        f"    during     {ms(burst['during_ms'])}",
        f"    p99 ratio  {burst['p99_ratio']}",
    ])


def run_load(config: LoadConfig, *, json_mode: bool) -> int:
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        load = Load(config, say=say)
    except LoadError as exc:
        say(f"load: {exc}")
        return 2
    try:
        users = asyncio.run(load.users())
        say(f"{len(users)} users ready ({load.timings['users_s']:.1f} s)")
        users, burst_users = users[:config.users], users[config.users:]
        chats = asyncio.run(load.chats(users))
        say(f"{len(chats)} chats ready ({load.timings['chats_s']:.1f} s)")
        if config.push_sink:
            asyncio.run(load.register_push_tokens(users))
            load.collect_pushes()  # from here on: this run's
            say(f"{len(users)} push tokens registered ({load.timings['tokens_s']:.1f} s)")
        if burst_users:
            load.prepare_burst(burst_users)  # spawned now, not while sending
        if config.offline:
            settle = config.settle or 0.0
        else:
            load.start_phones(users, chats)
            say(f"{len(users)} phones connected and subscribed ({load.timings['phones_s']:.1f} s)")
            settle = config.settle if config.settle is not None else SETTLE_BASE + SETTLE_PER_PHONE * len(users)
        say(f"settling {settle:.1f} s")
        time.sleep(settle)
        asyncio.run(load.send(chats))
        report = load.report(users, chats)
    except LoadError as exc:
        say(f"load: {exc}")
        return 2
    finally:
        load.stop_phones()
    if json_mode:
        print_json(report)
    else:
        print(human(report), flush=True)
    missing = report.get("push", {}).get("missing", 0)
    return 1 if report["lost"] or report["duplicated"] or report["out_of_order"] or missing else 0
