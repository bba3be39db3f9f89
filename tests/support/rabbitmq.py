"""Real RabbitMQ nodes for the tests, started from the project's own `broker/rabbitmq.conf`.

Used as a pytest plugin (see tests/conftest.py): the session fixture `rabbitmq` yields a
started `RabbitNode`, `rabbitmq_cluster` a started `RabbitCluster` of three nodes (only
for the tests that ask for it). Both have the interface of `MosquittoBroker`
(tests/support/mosquitto.py: host, port, ws_port, admin_username, admin_password, start,
stop, kill, freeze, thaw, restart, running, admin_can_login, logs), plus the management
API's `management_url` and `env()`, what a server process needs to know about them.
Node directories are prepared by the same code as `make run` (`chatserver.rabbitconf`).
A missing RabbitMQ fails the tests loudly; it never skips them.

Every port is chosen below 32768 and checked free: the kernel hands out 32768-60999 to
outgoing sockets, and a node whose port one of them holds fails to boot. Each node set has
an epmd of its own (started here, on a port of its own, so that it is ours to stop).

Measured on this 2-core machine (3.10.8): a fresh node is ready in about 15 s (5 of them
its MQTT plugin waiting, a fixed 300 ms at a time, for peers before it elects the leader
of its client-id tracker), a restarted one in about 5 s; a stop takes about 2 s (6 s
without removing the management plugin's statistics handler first, 5 of them a timeout
in its shutdown). The three-node cluster is ready in about 35 s. Hence one node per
session, and the cluster only where a test asks for it.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chatserver import rabbitconf
from chatserver.tls import ServerTls
from tests.support.mosquitto import connack

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# Below the ephemeral range (32768-60999), above the well-known and most registered ones.
PORT_RANGE = (20000, 32767)

# Processes still running when the interpreter exits (a run aborted outside fixture
# teardown) are killed: they run in sessions of their own and would outlive it. Held
# strongly: a node whose fixture failed halfway is otherwise collected, and never killed.
_running: set = set()


@atexit.register
def _kill_leftovers() -> None:
    for thing in list(_running):
        thing.kill()


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (a CI timeout, `timeout`) would skip atexit and leave
    # its nodes running (~130 MB each): SIGTERM is taken as Ctrl-C, so pytest stops the
    # run, tears its fixtures down, and `_kill_leftovers` runs. Only where nobody
    # installed a handler of their own.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)


_random = random.SystemRandom()


def free_low_port(taken: set[int]) -> int:
    """A port below 32768 that nothing listens on now (neither on 127.0.0.1 nor on all
    interfaces) and that is not in `taken`; added to `taken`."""
    while True:
        port = _random.randint(*PORT_RANGE)
        if port in taken:
            continue
        try:
            for address in ("127.0.0.1", "0.0.0.0"):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((address, port))
        except OSError:
            continue
        taken.add(port)
        return port


def _erlang_missing() -> RuntimeError:
    return RuntimeError(
        "RabbitMQ is not installed (Debian: bash scripts/system-deps.sh rabbitmq); "
        "the RabbitMQ tests need a real one"
    )


class Epmd:
    """Erlang's port mapper, where a machine's nodes find each other; one per node set,
    on loopback, in the foreground (so that this process owns it, unlike the daemon a
    node would start by itself and leave behind)."""

    def __init__(self, port: int, log_path: Path) -> None:
        try:
            self.binary = rabbitconf.find_epmd()
        except FileNotFoundError:
            raise _erlang_missing() from None
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "-port", str(self.port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"epmd exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)  # between connection attempts, not a wait for readiness
        self.kill()
        raise RuntimeError(f"epmd did not listen on {self.port} within {timeout}s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class RabbitNode:
    """One RabbitMQ node; its directory, config and credentials live under `workdir`.

    Alone (the default), it has its own epmd and Erlang cookie; as a member of a
    `RabbitCluster`, the cluster passes its epmd, cookie, credentials and node list.
    `auth_port` and `auth_secret` make the node's auth_http URLs
    (http://127.0.0.1:<auth_port>/broker-auth/<auth_secret>/...): a port where, in the
    suite, the front server's loopback auth listener is expected to answer.
    """

    host = "127.0.0.1"

    def __init__(
        self, workdir: Path, *, name: str = "chat", taken: set[int] | None = None,
        epmd: Epmd | None = None, cookie: str | None = None,
        admin_username: str = "chat-server", admin_password: str | None = None,
        auth_port: int | None = None, auth_secret: str | None = None,
        cluster_nodes: tuple[str, ...] = (), tls: ServerTls | None = None, plaintext: bool = True,
    ) -> None:
        try:
            self.binary = rabbitconf.find_server()
        except FileNotFoundError:
            raise _erlang_missing() from None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        taken = set() if taken is None else taken
        self.nodename = f"{name}@localhost"
        self.port = free_low_port(taken)
        self.ws_port = free_low_port(taken)
        self.tls = tls
        self.tls_port = self.wss_port = None
        if tls is not None:
            self.tls_port = free_low_port(taken)
            self.wss_port = free_low_port(taken)
        self.plaintext = plaintext
        self._own_epmd = epmd is None
        self.epmd = epmd or Epmd(free_low_port(taken), self.workdir / "epmd.log")
        self.ports = rabbitconf.NodePorts(
            amqp=free_low_port(taken), management=free_low_port(taken), dist=free_low_port(taken),
            epmd=self.epmd.port,
        )
        self.management_port = self.ports.management
        self.management_url = f"http://127.0.0.1:{self.management_port}"
        self.auth_port = auth_port or free_low_port(taken)
        self.auth_secret = auth_secret or secrets.token_urlsafe(24)
        self.admin_username = admin_username
        self.admin_password = admin_password or secrets.token_urlsafe(24)
        self.node_dir = self.workdir / name
        self.env_vars = rabbitconf.prepare(
            node_dir=self.node_dir,
            nodename=self.nodename,
            mqtt_port=self.port,
            ws_port=self.ws_port,
            ports=self.ports,
            admin_username=self.admin_username,
            admin_password=self.admin_password,
            auth_url=rabbitconf.auth_url(port=self.auth_port, secret=self.auth_secret),
            cookie=cookie or secrets.token_hex(16),
            bind=self.host,
            tls=tls,
            tls_ports=(self.tls_port, self.wss_port) if tls else None,
            plaintext=plaintext,
            cluster_nodes=cluster_nodes,
        )
        self.conf_path = self.node_dir / rabbitconf.CONF_NAME
        self.log_path = self.node_dir / "log" / f"{self.nodename}.log"
        # What the start script and the VM print before the log file is open.
        self.output_path = self.workdir / f"{name}.out"
        self.process: subprocess.Popen | None = None
        self._beam_pid: int | None = None

    # --- process control -------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the node's process and return at once (`wait_ready` waits for it)."""
        if self.running:
            raise RuntimeError(f"{self.nodename} already running")
        if self._own_epmd and (self.epmd.process is None or self.epmd.process.poll() is not None):
            self.epmd.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env |= self.env_vars
        with open(self.output_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(self.binary)],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes the VM with it
            )
        self._beam_pid = None
        _running.add(self)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the admin logs in over MQTT and the management API answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.nodename} exited with {self.process.returncode}\n{self.logs()}")
            if self.admin_can_login(timeout=min(1.0, max(deadline - time.monotonic(), 0.05))) \
                    and self.management_answers():
                return
            time.sleep(0.1)  # between connection attempts, not a wait for readiness
        self.kill()
        raise RuntimeError(f"{self.nodename} did not accept the admin within {timeout}s\n{self.logs()}")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node and return once the admin can log in and use the management API."""
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop (SIGTERM to the start script, which stops the VM), and of the node's
        own epmd. (`kill` leaves epmd running, as a crash of the VM does.)"""
        if self.running:
            self.thaw()  # a frozen VM cannot handle SIGTERM
            # As scripts/broker.sh does: without the management plugin's statistics
            # handler, the stop takes ~1 s instead of ~6 s (a 5 s timeout in 3.10.8's shutdown).
            try:
                self.ctl("eval", "gen_event:delete_handler(rabbit_event, rabbit_mgmt_db_handler, []).", timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"{self.nodename} ignored SIGTERM for {timeout}s") from None
            self._wait_group_gone()
        if self._own_epmd:
            self.epmd.kill()  # started again by `start`; a cluster's stays for the other nodes

    def kill(self) -> None:
        """Crash (SIGKILL to the node's whole process group: script, VM and its helpers)."""
        # Only while its start script is alive (unreaped): the group is then surely ours.
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            self._wait_group_gone()

    def freeze(self) -> None:
        """SIGSTOP the Erlang VM: connections stay open, nothing is answered (a hung node)."""
        os.kill(self.beam_pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.running:
            os.kill(self.beam_pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def beam_pid(self) -> int:
        """The Erlang VM's pid: the start script's child (it runs the VM in the background
        to turn SIGTERM into a clean stop)."""
        if self._beam_pid is None:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            if not children:
                raise RuntimeError(f"{self.nodename}: no Erlang VM under its start script")
            self._beam_pid = int(children[0])
        return self._beam_pid

    def _wait_group_gone(self, timeout: float = 10.0) -> None:
        """The VM outlives the script by a moment: wait until the group is empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(self.process.pid, signal.SIGKILL)

    # --- observation -----------------------------------------------------------------------

    def admin_can_login(self, timeout: float = 1.0) -> bool:
        """Whether a real MQTT login as the admin account succeeds now."""
        port, ca = (self.port, None) if self.plaintext else (self.tls_port, self.tls.ca)
        return connack(self.host, port, self.admin_username, self.admin_password, ca=ca, timeout=timeout) == 0

    def management(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
        """One request to the management API as the admin: (status, body); 0 if no answer."""
        request = urllib.request.Request(f"{self.management_url}{path}", method=method)
        token = base64.b64encode(f"{self.admin_username}:{self.admin_password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError:
            return 0, b""

    def management_answers(self) -> bool:
        return self.management("/api/overview", timeout=2.0)[0] == 200

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """`rabbitmqctl <args>` against this node (its name, cookie and epmd)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))} | self.env_vars
        return subprocess.run([str(rabbitconf.CTL_BIN), "-n", self.nodename, *args], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def env(self) -> dict[str, str]:
        """What a server process must be told about this broker besides the MQTT ports
        and the admin (tests/support/stack.py `server_env`)."""
        return {
            "BROKER": "rabbitmq",
            "RABBITMQ_MANAGEMENT_URL": self.management_url,
            "BROKER_AUTH_PORT": str(self.auth_port),
            "BROKER_AUTH_SECRET": self.auth_secret,
        }

    def logs(self) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-20000:]}")
            except FileNotFoundError:
                pass
        return "\n".join(parts)


class RabbitCluster:
    """Three nodes on this machine (chat-a, chat-b, chat-c @localhost), one epmd, one
    cookie, one admin, joined into one cluster by the config's classic peer discovery
    (no rabbitmqctl). The broker interface acts on the first node (`nodes[0]`: port,
    ws_port, management_url, freeze...); `nodes` gives each.

    Node A boots first; B and C then join it, booting side by side: nodes booting
    together with none of the others up yet would each form a cluster of their own.
    """

    host = "127.0.0.1"
    NAMES = ("chat-a", "chat-b", "chat-c")

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        self.epmd = Epmd(free_low_port(taken), self.workdir / "epmd.log")
        cookie = secrets.token_hex(16)
        self.admin_username = "chat-server"
        self.admin_password = secrets.token_urlsafe(24)
        self.auth_port = free_low_port(taken)
        self.auth_secret = secrets.token_urlsafe(24)
        members = tuple(f"{name}@localhost" for name in self.NAMES)
        self.nodes = [
            RabbitNode(self.workdir, name=name, taken=taken, epmd=self.epmd, cookie=cookie,
                       admin_username=self.admin_username, admin_password=self.admin_password,
                       auth_port=self.auth_port, auth_secret=self.auth_secret, cluster_nodes=members)
            for name in self.NAMES
        ]
        first = self.nodes[0]
        self.port, self.ws_port = first.port, first.ws_port
        self.tls, self.tls_port, self.wss_port, self.plaintext = None, None, None, True
        self.management_url = first.management_url
        self.management_urls = [node.management_url for node in self.nodes]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.epmd.process is None or self.epmd.process.poll() is not None:
            self.epmd.start()
        _running.add(self)
        self.nodes[0].start(timeout)
        rest = [node for node in self.nodes[1:] if not node.running]
        for node in rest:
            node.spawn()
        with ThreadPoolExecutor(len(rest) or 1) as pool:
            list(pool.map(lambda node: node.wait_ready(timeout), rest))
        self.wait_joined(timeout)

    def wait_joined(self, timeout: float = START_TIMEOUT) -> None:
        """Return once every node reports all three running in its cluster."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(set(self.running_members(node)) == {n.nodename for n in self.nodes} for node in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the nodes did not join within {timeout}s: "
                           f"{[self.running_members(node) for node in self.nodes]}\n{self.logs()}")

    @staticmethod
    def running_members(node: RabbitNode) -> list[str]:
        """The nodes `node`'s management API reports running in its cluster."""
        status, body = node.management("/api/nodes", timeout=2.0)
        if status != 200:
            return []
        return sorted(n["name"] for n in json.loads(body) if n.get("running"))

    def stop(self) -> None:
        """Every node stopped gracefully, side by side (each stop takes ~6 s)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))
        self.epmd.kill()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
        self.epmd.kill()

    def freeze(self) -> None:
        self.nodes[0].freeze()

    def thaw(self) -> None:
        self.nodes[0].thaw()

    def restart(self) -> None:
        self.nodes[0].restart()

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def admin_can_login(self, timeout: float = 1.0) -> bool:
        return self.nodes[0].admin_can_login(timeout)

    def env(self) -> dict[str, str]:
        return self.nodes[0].env() | {"RABBITMQ_MANAGEMENT_URL": ",".join(self.management_urls)}

    def logs(self) -> str:
        return "\n".join(node.logs() for node in self.nodes)


def make_workdir(prefix: str = "chat-rabbitmq-") -> Path:
    """A private temp dir (the node runs as this user: no other user needs to pass)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def rabbitmq(request: pytest.FixtureRequest):
    """A started RabbitMQ node for the whole session; stopped (and its directory removed)
    at the end, kept when tests failed, for its log."""
    workdir = make_workdir()
    node = RabbitNode(workdir)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        node.kill()
        if request.session.testsfailed:
            print(f"\nrabbitmq directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq_cluster(request: pytest.FixtureRequest):
    """Three joined RabbitMQ nodes for the session (only the tests that ask for it)."""
    workdir = make_workdir("chat-rabbitmq-cluster-")
    cluster = RabbitCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            cluster.kill()
        if request.session.testsfailed:
            print(f"\nrabbitmq cluster directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
