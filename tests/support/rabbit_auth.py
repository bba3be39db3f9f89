"""A stack on RabbitMQ whose every login and subscription Django decides, for the attacks
of tests/chatserver/test_rabbitmq_access.py.

`rabbit_auth_stack` (module): a database of its own in the session's PostgreSQL cluster
(migrated once; the session's relay, if any, drains the session's database and never
this one), gunicorn behind nginx with the broker-auth listener on a free port, one
RabbitMQ 3.10 node whose HTTP auth backend asks that listener, and a relay process with
BROKER=rabbitmq. Tests drive it over HTTP and MQTT only, as phones and attackers would.

The node here is a stopgap with the fewest parts (one node, the auth lines as
chatserver/broker_auth.py wants them); branch rabbit-node's `tests/support/rabbitmq.py`
and `broker/rabbitmq.conf` are the project's own node and config.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from tests.support.stack import ROOT, HttpServer, ServerProcess, free_port, server_env, wait_until

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
CACHE_TTL = 2  # seconds, RABBITMQ_AUTH_CACHE_TTL's default


def low_free_port() -> int:
    """A free port below 32768: RabbitMQ's listeners fail in the kernel's ephemeral range
    when an outgoing socket holds the port (dist_port_already_used)."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


class AuthNode:
    """One RabbitMQ node, everything under `workdir`, the auth lines of the contract."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, auth_url: str, cache_ttl: int = CACHE_TTL) -> None:
        if not os.access(SERVER, os.X_OK):
            raise RuntimeError("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
        self.workdir = Path(workdir)
        ports = set()
        while len(ports) < 5:
            ports.add(low_free_port())
        self.port, self.amqp_port, self.management_port, self.dist_port, self.epmd_port = sorted(ports)
        self.ws_port = self.port  # no WebSocket listener here
        self.name = f"rauth{self.port}@localhost"
        self.admin_username = "chat-server"
        self.admin_password = secrets.token_urlsafe(24)
        self.management_url = f"http://127.0.0.1:{self.management_port}"
        self.home = self.workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".erlang.cookie").write_text(secrets.token_hex(20))
        os.chmod(self.home / ".erlang.cookie", 0o400)
        (self.workdir / "enabled_plugins").write_text(
            "[rabbitmq_mqtt,rabbitmq_auth_backend_http,rabbitmq_auth_backend_cache,rabbitmq_management].\n")
        (self.workdir / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
            "management.tcp.ip = 127.0.0.1",
            f"management.tcp.port = {self.management_port}",
            "mqtt.allow_anonymous = false",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "mqtt.durable_queue_type = quorum",
            "loopback_users = none",
            # The server's own account first (internal); then Django: logins asked every
            # time, everything else through the cache.
            "auth_backends.1 = internal",
            "auth_backends.2.authn = http",
            "auth_backends.2.authz = cache",
            "auth_cache.cached_backend = http",
            f"auth_cache.cache_ttl = {cache_ttl * 1000}",
            "auth_http.http_method = post",
            *(f"auth_http.{kind}_path = {auth_url}/{kind}" for kind in ("user", "vhost", "resource", "topic")),
            "",
        ]))
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 1:1 +sbwt none",
        }
        self.process: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None

    def ctl(self, *args: str) -> str:
        done = subprocess.run([CTL, "-n", self.name, *args], env=self.env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}\n{self.logs()}")
        return done.stdout

    def start(self) -> AuthNode:
        # A private epmd, this fixture's child (the node would start a detached one).
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        with open(self.workdir / "epmd.out", "ab") as out:
            self.epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        with open(self.workdir / "node.out", "ab") as out:
            self.process = subprocess.Popen([SERVER], env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        # await_startup fails at once until the node has registered with epmd: ask again.
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.process.returncode}\n{self.logs()}")
            try:
                self.ctl("await_startup", "--timeout", "60")
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # between attempts; each one itself waits for the node
        self.ctl("add_user", self.admin_username, self.admin_password)
        self.ctl("set_user_tags", self.admin_username, "administrator")
        self.ctl("set_permissions", "-p", "/", self.admin_username, ".*", ".*", ".*")
        self.ctl("delete_user", "guest")
        wait_until(self._management_answers, 30, "the management API")
        return self

    def _management_answers(self) -> bool:
        try:
            return requests.get(f"{self.management_url}/api/overview", timeout=2,
                                auth=(self.admin_username, self.admin_password)).ok
        except requests.RequestException:
            return False

    def api(self, path: str):
        response = requests.get(f"{self.management_url}{path}", timeout=10,
                                auth=(self.admin_username, self.admin_password))
        response.raise_for_status()
        return response.json()

    def bindings_of(self, queue: str) -> list[str]:
        """The routing keys a queue is bound with on amq.topic ([] if it does not exist)."""
        try:
            return sorted(b["routing_key"] for b in self.api(f"/api/queues/%2F/{queue}/bindings")
                          if b["source"] == "amq.topic")
        except requests.HTTPError:
            return []

    def logs(self) -> str:
        parts = []
        for path in [self.workdir / "node.out", *sorted((self.workdir / "log").glob("*.log"))]:
            try:
                parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.ctl("stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            self.epmd.wait(10)


class RabbitAuthStack:
    def __init__(self, *, url: str, node: AuthNode, http: HttpServer, relay: ServerProcess, database_url: str):
        self.url, self.node, self.http, self.relay, self.database_url = url, node, http, relay, database_url

    def sql(self, query: str, params: tuple | list = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def logs(self) -> str:
        return (f"--- relay\n{self.relay.log_tail(60)}\n--- web\n{self.http.log_tail(30)}\n"
                f"--- rabbitmq\n{self.node.logs()}")


@pytest.fixture(scope="module")
def rabbit_auth_stack(postgres, tmp_path_factory) -> Iterator[RabbitAuthStack]:
    dbname = f"rabbit_auth_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    database_url = postgres.url(dbname)
    workdir = tmp_path_factory.mktemp("rabbit-auth")
    # RabbitMQ's paths must stay short and traversable; its own directory, not pytest's.
    node_dir = Path(tempfile.mkdtemp(prefix="chat-rauth-"))
    secret = secrets.token_urlsafe(32)
    auth_port = free_port()
    node = AuthNode(node_dir, auth_url=f"http://127.0.0.1:{auth_port}/broker-auth/{secret}")
    env = server_env(database_url=database_url, broker=node, data_dir=workdir) | {
        "BROKER": "rabbitmq",
        "BROKER_AUTH_SECRET": secret,
        "BROKER_AUTH_PORT": str(auth_port),
        "RABBITMQ_MANAGEMENT_URL": node.management_url,
        "RABBITMQ_AUTH_CACHE_TTL": str(CACHE_TTL),
    }
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
    http = relay = None
    try:
        http = HttpServer(env, workdir, broker_auth_port=auth_port).start()
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
        shutil.rmtree(node_dir, ignore_errors=True)
