"""A stack on RabbitMQ whose every login and subscription Django decides, for the attacks
of tests/chatserver/test_rabbitmq_access.py.

`rabbit_auth_stack` (module): a database of its own in the session's PostgreSQL cluster
(migrated once; the session's relay, if any, drains the session's database and never
this one), one RabbitMQ 3.10 node, and a `tests.support.stack.ProcessStack` on both: a
relay process with BROKER=rabbitmq, granian behind nginx with the broker-auth listener
on the node's auth port, which its HTTP auth backend asks. Tests drive it over HTTP and MQTT only, as phones and attackers would.

The node is `tests.support.rabbitmq.RabbitNode`, from the project's own
`broker/rabbitmq.conf` (its auth lines: logins asked every time, the rest cached for
RABBITMQ_AUTH_CACHE_TTL); the session's `rabbitmq` node has no front server answering
its auth checks, hence one of this module's own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

from tests.support.rabbitmq import RabbitNode, make_workdir
from tests.support.postgres import sql
from tests.support.stack import ProcessStack, migrated_database

CACHE_TTL = 2  # seconds, RABBITMQ_AUTH_CACHE_TTL's default


class RabbitAuthStack:
    def __init__(self, *, node: RabbitNode, processes: ProcessStack):
        self.node, self.processes = node, processes
        self.url, self.http, self.relay = processes.url, processes.http, processes.relay
        self.database_url = processes.database_url

    def bindings_of(self, queue: str) -> list[str]:
        """The routing keys a queue is bound with on amq.topic ([] if it does not exist)."""
        status, body = self.node.management(f"/api/queues/%2F/{queue}/bindings")
        if status == 404:
            return []
        assert status == 200, (status, body)
        return sorted(b["routing_key"] for b in json.loads(body) if b["source"] == "amq.topic")

    def sql(self, query: str, params: tuple | list = ()) -> list[tuple]:
        return sql(self.database_url, query, params)

    def logs(self) -> str:
        return (f"--- relay\n{self.relay.log_tail(60)}\n--- web\n{self.http.log_tail(30)}\n"
                f"--- rabbitmq\n{self.node.logs()}")


@pytest.fixture(scope="module")
def rabbit_auth_stack(postgres, tmp_path_factory) -> Iterator[RabbitAuthStack]:
    workdir = tmp_path_factory.mktemp("rabbit-auth")
    database_url = migrated_database(postgres, f"rabbit_auth_{os.getpid()}_{secrets.token_hex(3)}", data_dir=workdir)
    node_dir = make_workdir("chat-rabbit-auth-")
    node = RabbitNode(node_dir, name="auth")
    processes = None
    try:
        node.start()
        # The front server with its loopback listener for the node's checks, and a relay.
        processes = ProcessStack(database_url=database_url, broker=node, workdir=workdir,
                                 env={"RABBITMQ_AUTH_CACHE_TTL": str(CACHE_TTL)})
        processes.start()
        yield RabbitAuthStack(node=node, processes=processes)
    finally:
        if processes is not None:
            processes.stop()
        node.stop()
        node.epmd.kill()
        shutil.rmtree(node_dir, ignore_errors=True)
