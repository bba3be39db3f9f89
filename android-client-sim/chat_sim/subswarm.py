"""Phones as `mosquitto_sub` processes, for big fan-out: `chat-sim load --receiver mosquitto_sub`.

The same phones as `chat_sim.swarm` (each its own MQTT connection with the device's
credentials and client id, a persistent session, QoS 1 on its user topic, a Last Will
`offline` on its presence topic), but a received copy is handled in C: mosquitto_sub
alone ~14 us of CPU a copy; in bench group runs (100 members, 25 msg/s) 15-50 us a copy
for the whole load generator (its line-buffered writes, -d's lines, this poller, the
senders) against ~82 us with paho clients (parse, PUBACK, callback in Python). At a
100-member group's tens of thousands of copies a second that is the difference between
a load generator that measures and one that takes the cores the relay needs.

What the phones do not do here: publish `online` (on connect, every keepalive, when
probed). The server then counts them away, which changes nothing that this profile
measures (their copies are published to their user topics all the same) but means it is
not a presence test: the swarm remains the receiver for that.

Each mosquitto_sub writes `<receipt time> <payload>` lines to a file of its own; this
process (the same protocol with the parent as chat_sim.swarm.receiver_main) counts lines
for progress while sending and reads the payloads only when the report is asked for,
after the sending window.
"""

from __future__ import annotations

import array
import json
import os
import selectors
import subprocess
import tempfile
from pathlib import Path

from chat_sim.swarm import C_DELIVERED, C_READY, PhoneSpec, _presence_topic

POLL = 0.25  # progress only: the receipt times are in the lines


class SubPhone:
    def __init__(self, spec: PhoneSpec, workdir: Path) -> None:
        self.spec = spec
        self.out = workdir / f"{spec.user_id}.out"
        self.process: subprocess.Popen | None = None
        self.ready = False
        self.lines = 0
        self.offset = 0

    def start(self) -> None:
        m = self.spec.mqtt
        # stdbuf -oL: line by line into the file (stdio would hold 4 KiB back: the last
        # copies would show only at exit); the receipt time is taken when printed.
        args = ["stdbuf", "-oL", "mosquitto_sub", "-h", m["host"], "-p", str(m["port"]), "-u", m["username"], "-P", m["password"],
                "-i", m["client_id"], "-c", "-q", "1", "-t", m["user_topic"], "-V", "mqttv311",
                "-k", str(int(m.get("keepalive") or 60)), "-F", "%U %p", "-d",
                "--will-topic", _presence_topic(self.spec), "--will-payload", "offline", "--will-qos", "1",
                "--will-retain"]
        with open(self.out, "wb") as out:
            # -d: its lines ("Client ... received SUBACK", one per packet) are mixed with
            # the copies' lines, which alone start with the receipt time.
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def poll(self, marker: bytes) -> int:
        """New copies of this run since the last poll (`marker`: the run tag and a space,
        once in a copy's content and nowhere else), whole lines only."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return 0
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        chunk = chunk[:end]
        if not self.ready and b"received SUBACK" in chunk:
            self.ready = True
        new = chunk.count(marker)
        self.lines += new
        return new


class SubSwarm:
    def __init__(self, specs: list[PhoneSpec], *, tag: str, counters) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="chat-sim-subs-"))
        self.phones = [SubPhone(spec, self.workdir) for spec in specs]
        self.tag = tag
        self.marker = f"{tag} ".encode()
        self.counters = counters

    def run(self, conn) -> None:
        for phone in self.phones:
            phone.start()
        selector = selectors.DefaultSelector()
        selector.register(conn.fileno(), selectors.EVENT_READ)
        try:
            while True:
                for phone in self.phones:
                    was = phone.ready
                    self.counters[C_DELIVERED] += phone.poll(self.marker)
                    if phone.ready and not was:
                        self.counters[C_READY] += 1
                if selector.select(timeout=POLL):
                    what, value = conn.recv()
                    if what == "stop":
                        return
                    if what == "report":
                        conn.send(("report", self.report(value)))
        finally:
            for phone in self.phones:
                if phone.process is not None and phone.process.poll() is None:
                    phone.process.terminate()
            for phone in self.phones:
                if phone.process is not None:
                    try:
                        phone.process.wait(5)
                    except subprocess.TimeoutExpired:
                        phone.process.kill()
            for path in self.workdir.iterdir():
                path.unlink()
            os.rmdir(self.workdir)

    def report(self, accepted: dict[int, list[int]]) -> dict:
        """The same checks as chat_sim.swarm.Swarm.report, from the files."""
        latencies, sent_at = array.array("d"), array.array("d")
        delivered = duplicates = out_of_order = lost = 0
        lost_examples = []
        for phone in self.phones:
            phone.poll(self.marker)
            seen: dict[int, set[int]] = {}
            top: dict[int, int] = {}
            with open(phone.out, "rb") as f:
                for line in f.read()[:phone.offset].splitlines():
                    if not line[:1].isdigit():
                        continue  # -d's lines
                    stamp, _, payload = line.partition(b" ")
                    try:
                        event = json.loads(payload)
                    except ValueError:
                        continue
                    if event.get("type") != "message.created":
                        continue
                    data = event["data"]
                    content = data["content"]
                    if not content.startswith(self.tag):
                        continue  # another run's message, still queued in a persistent session
                    ids = seen.setdefault(data["chat"], set())
                    if data["id"] in ids:
                        duplicates += 1
                        continue
                    ids.add(data["id"])
                    if data["seq"] < top.get(data["chat"], 0):
                        out_of_order += 1
                    else:
                        top[data["chat"]] = data["seq"]
                    sent = float(content.split(" ", 2)[1])
                    latencies.append(float(stamp) - sent)
                    sent_at.append(sent)
                    delivered += 1
            for chat in phone.spec.chats:
                missing = set(accepted.get(chat, ())) - seen.get(chat, set())
                if missing:
                    lost += len(missing)
                    if len(lost_examples) < 10:
                        lost_examples.append({"user": phone.spec.user_id, "chat": chat, "missing": sorted(missing)[:10]})
        self.counters[C_DELIVERED] = delivered
        return {
            "phones": len(self.phones), "ready": sum(p.ready for p in self.phones), "delivered": delivered,
            "duplicates": duplicates, "out_of_order": out_of_order, "reconnects": 0, "lost": lost,
            "lost_examples": lost_examples, "latencies": latencies.tobytes(), "sent_at": sent_at.tobytes(),
        }


def receiver_main(conn, specs: list[PhoneSpec], tag: str, counters, hold: bool = False) -> None:
    """Entry point of the receiver process (as chat_sim.swarm.receiver_main; no `hold`)."""
    SubSwarm(specs, tag=tag, counters=counters).run(conn)
