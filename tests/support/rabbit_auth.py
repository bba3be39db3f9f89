"""A stack on RabbitMQ whose every login and subscription Django decides, for the attacks
of tests/chatserver/test_rabbitmq_access.py.

`rabbit_auth_stack` (module): a database of its own in the session's PostgreSQL cluster
(migrated once; the session's relay, if any, drains the session's database and never
this one), gunicorn behind nginx with the broker-auth listener on a free port, one
RabbitMQ 3.10 node whose HTTP auth backend asks that listener, and a relay process with
BROKER=rabbitmq. Tests drive it over HTTP and MQTT only, as phones and attackers would.

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
import sys
from collections.abc import Iterator

import pytest

from tests.support.rabbitmq import RabbitNode, make_workdir
from tests.support.postgres import sql
from tests.support.stack import HttpServer, ServerProcess, migrated_database, server_env, wait_until

CACHE_TTL = 2  # seconds, RABBITMQ_AUTH_CACHE_TTL's default


class RabbitAuthStack:
    def __init__(self, *, url: str, node: RabbitNode, http: HttpServer, relay: ServerProcess, database_url: str):
        self.url, self.node, self.http, self.relay, self.database_url = url, node, http, relay, database_url

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
    env = server_env(database_url=database_url, broker=node, data_dir=workdir) | node.env() | {
        "RABBITMQ_AUTH_CACHE_TTL": str(CACHE_TTL),
    }
    http = relay = None
    try:
        http = HttpServer(env, workdir, broker_auth_port=node.auth_port).start()
        node.start()
        relay = ServerProcess("relay", [sys.executable, "manage.py", "relay"], env, workdir).start()
        stack = RabbitAuthStack(url=http.url, node=node, http=http, relay=relay, database_url=database_url)
        try:
            wait_until(lambda: stack.sql("SELECT broker_connected FROM chat_relay_status") == [(True,)], 30,
                       "the relay on RabbitMQ")
        except AssertionError:
            raise AssertionError(stack.logs()) from None
        yield stack
    finally:
        for part in (relay, http):
            if part is not None:
                part.stop()
        node.stop()
        node.epmd.kill()
        shutil.rmtree(node_dir, ignore_errors=True)
