"""A phone's session, and the relay, survive losing a RabbitMQ node, end to end.

The product on the session's three-node cluster (`rabbitmq_cluster`): a database of its
own, granian behind nginx (whose loopback listener answers the nodes' auth checks), a
real relay and presence worker given every node's address (MQTT_HOST,
chatserver/broker_addresses.py) and every node's management API. A phone, paho 3.1.1 with
a persistent session, is on node A, which holds its session queue (a quorum queue: its
leader is where it was made) and both workers' connections. Messages are sent over HTTP in a direct chat and a group,
without a pause, while node A is stopped (cleanly, or its VM killed with SIGKILL); the
phone then resumes its session on node B, as the app does with the next address. It must
end up with every message, the first copy of each in per-chat order (duplicates are
allowed: delivery is at-least-once); and both workers must have moved to another node
by themselves.

What this costs: the cluster boots once per session (~35 s); each case then stops and
restarts node A (~10 s).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from itertools import count

import paho.mqtt.client as paho
import pytest

from tests.support.mqtt import MqttProbe
from tests.support.stack import ProcessStack, ServerProcess, call, migrated_database, wait_until

pytestmark = [pytest.mark.rabbitmq_only, pytest.mark.slow]

PASSWORD = "cluster session 123"
_names = count(1)


class ClusterStack:
    def __init__(self, *, cluster, processes: ProcessStack, presence: ServerProcess) -> None:
        self.cluster, self.processes, self.presence = cluster, processes, presence
        self.http, self.url, self.relay = processes.http, processes.url, processes.relay

    def healthy(self) -> bool:
        status, body = self.processes.health()
        return status == 200 and (body or {}).get("status") == "ok"

    def on_first_node(self) -> None:
        """Both workers connected to node A: a worker that moved is restarted (a new one
        starts with the first address)."""
        for worker in (self.relay, self.presence):
            if self.ports(worker)[-1:] != [self.cluster.nodes[0].port]:
                worker.stop()
                worker.log_path.unlink()
                worker.start()
                wait_until(lambda w=worker: self.ports(w), 30, f"the new {worker.name} worker connected",
                           interval=0.1)
        wait_until(self.healthy, 30, "the stack healthy", interval=0.1)

    @staticmethod
    def ports(worker: ServerProcess) -> list[int]:
        """The MQTT ports a worker connected to, in order (from its log)."""
        log = worker.log_path.read_text(errors="replace")
        return [int(port) for port in re.findall(r"connected to the broker at [^:\s]+:(\d+)", log)]

    def logs(self) -> str:
        return (f"--- relay\n{self.relay.log_tail(60)}\n--- presence\n{self.presence.log_tail(20)}"
                f"\n--- web\n{self.http.log_tail(30)}")


@pytest.fixture(scope="module")
def cluster_stack(postgres, rabbitmq_cluster, tmp_path_factory) -> Iterator[ClusterStack]:
    workdir = tmp_path_factory.mktemp("cluster-session")
    database_url = migrated_database(postgres, f"cluster_session_{os.getpid()}_{secrets.token_hex(3)}",
                                     data_dir=workdir)
    processes = ProcessStack(database_url=database_url, broker=rabbitmq_cluster, workdir=workdir, env={
        # Node A first: the relay's connection is on the node the test stops.
        "MQTT_HOST": ",".join(f"{node.host}:{node.port}" for node in rabbitmq_cluster.nodes),
    })
    presence = ServerProcess("presence", [sys.executable, "manage.py", "worker", "presence"], processes.env, workdir)
    try:
        presence.start()
        processes.start()
        yield ClusterStack(cluster=rabbitmq_cluster, processes=processes, presence=presence)
    finally:
        presence.stop()
        processes.stop()


class Account:
    def __init__(self, url: str) -> None:
        self.url = url
        status, body = call(f"{url}/accounts/signup/", "POST",
                            {"username": f"cluster{next(_names)}x{secrets.token_hex(2)}", "password": PASSWORD})
        assert status == 201, body
        self.id, self.token, self.mqtt = body["id"], body["token"], body["mqtt"]

    def post(self, path: str, body: dict) -> tuple[int, dict | None]:
        return call(f"{self.url}{path}", "POST", body, token=self.token)

    def chat_with(self, *others: Account) -> int:
        status, body = self.post("/chats/", {"members": [o.id for o in others],
                                             **({"name": "g"} if len(others) > 1 else {})})
        assert status == 201, body
        return body["id"]


class Sender(threading.Thread):
    """Sends numbered messages to one chat, one after the other, until told to stop;
    keeps (id, status) of each in the order sent."""

    def __init__(self, author: Account, chat: int) -> None:
        super().__init__(daemon=True)
        self.author, self.chat = author, chat
        self.stop = threading.Event()
        self.sent: list[int] = []
        self.refused: list[tuple[int, dict | None]] = []

    def run(self) -> None:
        for n in count(1):
            if self.stop.is_set():
                return
            status, body = self.author.post(f"/chats/{self.chat}/messages/", {"content": f"{self.chat}-{n}"})
            if status == 201:
                self.sent.append(body["id"])
            else:
                self.refused.append((status, body))
            self.stop.wait(0.02)


def first_copies(phone: MqttProbe, chat: int) -> list[int]:
    """The ids of the chat's messages the phone got, first copies only, in arrival order."""
    seen, ids = set(), []
    for payload in phone.messages_on(f"chat/chats/{chat}"):
        event = json.loads(payload)
        if event["type"] == "message.created" and event["data"]["id"] not in seen:
            seen.add(event["data"]["id"])
            ids.append(event["data"]["id"])
    return ids


@pytest.mark.parametrize("loss", ["stop", "kill"])
def test_a_phone_resumes_on_another_node_with_every_message_in_order(cluster_stack, loss):
    cluster = cluster_stack.cluster
    a, b, _ = cluster.nodes
    # given: alice's phone on node A, with a persistent session and both chats subscribed
    alice, bob, carol = (Account(cluster_stack.url) for _ in range(3))
    direct, group = bob.chat_with(alice), carol.chat_with(alice, bob)
    topics = [f"chat/chats/{direct}", f"chat/chats/{group}"]
    phone = MqttProbe(a.host, a.port, protocol=paho.MQTTv311)
    assert phone.connect(alice.mqtt["username"], alice.mqtt["password"], alice.mqtt["client_id"],
                         clean_session=False) == 0
    assert [phone.subscribe(topic) for topic in topics] == [1, 1]
    # ...and the server's relay and presence worker on node A too
    cluster_stack.on_first_node()
    assert [cluster_stack.ports(w)[-1] for w in (cluster_stack.relay, cluster_stack.presence)] == [a.port] * 2
    senders = [Sender(bob, direct), Sender(carol, group)]
    try:
        for sender in senders:
            sender.start()
        wait_until(lambda: all(len(first_copies(phone, s.chat)) >= 5 for s in senders), 20,
                   "messages flowing to the phone on node A")

        # when: node A goes, mid-run
        if loss == "stop":
            a.stop()
        else:
            a.kill()
        assert phone.wait_disconnected(10)
        # the phone resumes its session on node B (the app: the next address), subscribing
        # again as it does on every connection
        phone.port = b.port
        assert phone.connect(alice.mqtt["username"], alice.mqtt["password"], alice.mqtt["client_id"],
                             clean_session=False) == 0
        assert phone.session_present is True
        assert [phone.subscribe(topic) for topic in topics] == [1, 1]
        # the relay moves to another node by itself and delivers what is sent from now on
        wait_until(cluster_stack.healthy, 30, "the relay back on the broker", interval=0.1)
        after = {s.chat: len(s.sent) for s in senders}
        wait_until(lambda: all(len(s.sent) >= after[s.chat] + 10 for s in senders), 30,
                   "more messages sent after the node went")
    finally:
        for sender in senders:
            sender.stop.set()
        for sender in senders:
            sender.join(15)

    try:
        # then: every message sent, first copies in the order they were sent, per chat
        for sender in senders:
            assert sender.refused == []
            wait_until(lambda s=sender: set(first_copies(phone, s.chat)) >= set(s.sent), 30,
                       f"every message of chat {sender.chat} on the phone")
            assert first_copies(phone, sender.chat) == sender.sent
        # and both workers are on another node, by themselves
        for worker in (cluster_stack.relay, cluster_stack.presence):
            wait_until(lambda w=worker: cluster_stack.ports(w)[-1] in {n.port for n in cluster.nodes} - {a.port},
                       30, f"the {worker.name} worker on another node")
    finally:
        phone.close()
        # node A back in the cluster for what comes next
        if not a.running:
            a.start()
        cluster.wait_joined()
