"""The server's own processes for tests: the workers, and a whole stack over real HTTP.

- `relay_process`, `presence_process` (session): `manage.py worker relay` and
  `manage.py worker presence` against the test database and the session's `broker`
  (Mosquitto or RabbitMQ: tests/support/brokers.py), each logging to a file.
- `relay` (function): a transactional database plus both workers, once the relay reports
  the broker connected (the heartbeat row is truncated with everything else between tests).
- `http_server` (session): nginx on a free port and granian behind it (`HttpServer`), same
  database and broker.
- `live_stack` (function): all of it, for tests that act like a phone over real HTTP.
- `ProcessStack`: a relay and granian of their own, on a given database and broker, that
  a test may kill and restart (the fault tests' stacks, see tests/support/faults.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from chatserver import frontconf
from chatserver.tls import ServerTls

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
# Where the Procfile's `web:` line puts the front's socket (chatserver/frontconf.py).
PROCFILE_SOCKET = '"$DATA_DIR/front/web.sock"'


def procfile_command(name: str, *, socket_path: Path | None = None) -> list[str]:
    """The Procfile's `name:` line as honcho runs it, through bash (its $VARS expand from
    the environment the process is given), with this interpreter's directory for
    `.venv/bin/`; `socket_path`: the front's socket there instead of under DATA_DIR (the
    tests' front directory is not their DATA_DIR: nginx's workers could not reach it)."""
    line = next((line for line in PROCFILE.read_text().splitlines() if line.startswith(f"{name}:")), None)
    if line is None:
        raise AssertionError(f"the Procfile has no {name}: line")
    command = line.split(":", 1)[1].strip().replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    if socket_path is not None:
        if PROCFILE_SOCKET not in command:
            raise AssertionError(f"the Procfile's {name}: line no longer names {PROCFILE_SOCKET}")
        command = command.replace(PROCFILE_SOCKET, shlex.quote(str(socket_path)))
    return ["bash", "-c", command]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def worker_in_thread(factory) -> Iterator:
    """A worker (`factory(stop=...)`, e.g. PushWorker) run by `chatserver.workers.run` in a
    thread of this process, with its own database connection; stopped, and checked gone,
    on exit. Yields the worker."""
    from chatserver import workers

    stop = threading.Event()
    worker = factory(stop=stop)
    thread = threading.Thread(target=workers.run, kwargs={"worker": worker, "stop": stop}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), f"the {worker.name} worker did not stop"


class ServerProcess:
    """A process of the server, with its output in a log file (never an undrained pipe)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, an OOM kill)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def child_pids(pid: int) -> list[int]:
    """The pids of `pid`'s live children (Linux: /proc/<pid>/task/*/children)."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(v) for v in f.read().split()]
    except OSError:
        pass
    return children


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie nobody reaped yet has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def server_env(*, database_url: str, broker, data_dir: Path) -> dict[str, str]:
    """The environment of a server process pointed at the test database and broker."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("MQTT_", "DATABASE_", "HTTP_", "BROKER", "RABBITMQ_"))
    }
    env.update(
        # The suite's settings (fast hasher, events checked against docs/asyncapi.yaml).
        DJANGO_SETTINGS_MODULE="tests.settings",
        ENV_FILE="",
        DATABASE_URL=database_url,
        DATA_DIR=str(data_dir),
        DJANGO_SECRET_KEY=django_settings.SECRET_KEY,
        MQTT_HOST=broker.host,
        MQTT_PORT=str(broker.port),
        MQTT_WS_PORT=str(broker.ws_port),
        # The broker's TLS listeners, if it has any (tests/support/mosquitto.py, rabbitmq.py).
        **({"MQTT_TLS": "on", "MQTT_TLS_PORT": str(broker.tls_port), "MQTT_WSS_PORT": str(broker.wss_port),
            "MQTT_TLS_CA": str(broker.tls.ca), "MQTT_PLAINTEXT": "on" if broker.plaintext else "off"}
           if getattr(broker, "tls", None) else {"MQTT_TLS": "off"}),
        MQTT_ADMIN_USERNAME=broker.admin_username,
        MQTT_ADMIN_PASSWORD=broker.admin_password,
        # Which broker it is, and for RabbitMQ its management API and auth endpoints.
        **broker.env(),
        # The suite's own (`MQTT_PROTOCOL=3.1.1 pytest ...` runs every worker over 3.1.1;
        # on RabbitMQ the settings make it 3.1.1 anyway).
        MQTT_PROTOCOL=django_settings.MQTT_PROTOCOL if broker.env().get("BROKER") != "rabbitmq" else "3.1.1",
        # Rate limits out of load-like tests' way (tests/settings.py sets the same
        # defaults; a stack's own `env` may set low ones).
        **{name: "1000000/minute" for name in (
            "AUTH_THROTTLE_RATE", "LOGIN_FAILURE_THROTTLE_RATE", "SEND_THROTTLE_RATE",
            "UPLOAD_THROTTLE_RATE", "FRIEND_REQUEST_THROTTLE_RATE")},
        SEND_THROTTLE_BURST="1000000",
        # Devices refresh their presence this often; one that stops is gone after two:
        # short, so that tests see it within seconds.
        MQTT_KEEPALIVE="5",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def relay_process(test_database_url, broker, tmp_path_factory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("relay")
    env = server_env(database_url=test_database_url, broker=broker, data_dir=workdir)
    process = ServerProcess("relay", [sys.executable, "manage.py", "worker", "relay"], env, workdir).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def presence_process(test_database_url, broker, tmp_path_factory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("presence")
    env = server_env(database_url=test_database_url, broker=broker, data_dir=workdir)
    process = ServerProcess("presence", [sys.executable, "manage.py", "worker", "presence"], env, workdir).start()
    yield process
    process.stop()


@pytest.fixture
def relay(request, transactional_db, relay_process, presence_process, broker, settings) -> ServerProcess:
    """A running relay (and presence worker), connected to the broker, for a test that
    commits its writes. On RabbitMQ also the session's front server: the node asks it
    about every device login and subscription (chatserver/broker_auth.py)."""
    from chatserver.outbox import relay_status

    if getattr(broker, "auth_port", None):
        request.getfixturevalue("http_server")

    settings.MQTT_HOST = broker.host
    settings.MQTT_PORT = settings.MQTT_PUBLIC_PORT = broker.port
    settings.MQTT_WS_PORT = settings.MQTT_PUBLIC_WS_PORT = broker.ws_port
    for process in (relay_process, presence_process):
        if not process.alive():
            raise AssertionError(f"the {process.name} worker died:\n{process.log_tail()}")
    try:
        wait_until(lambda: relay_status()["broker"] == "up", 15, "the relay to report the broker up")
    except AssertionError:
        raise AssertionError(f"relay not connected; its log:\n{relay_process.log_tail()}") from None
    return relay_process


class HttpServer(ServerProcess):
    """The HTTP tier as it ships: nginx with the project's config (front/nginx.conf) on a
    free port of 127.0.0.1, and granian behind it on the front's Unix socket, started by
    the Procfile's `web:` line. `kill()` and `stop()` of this object are granian's (nginx
    then answers 503 `unavailable`); `front` is the nginx process."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int = 2,
                 tls: ServerTls | None = None, broker_auth_port: int | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        # The loopback listener for RabbitMQ's auth checks (BROKER=rabbitmq), if any.
        self.broker_auth_port = broker_auth_port
        # nginx's workers run as www-data: pytest's own temp dirs (0700) would stop them.
        self.front_root = Path(tempfile.mkdtemp(prefix="chat-front-"))
        os.chmod(self.front_root, 0o711)
        self.front_dir = self.front_root / "front"
        super().__init__(
            "web",
            procfile_command("web", socket_path=frontconf.socket_path(self.front_dir)),
            {**env, "WEB_WORKERS": str(workers), "WEB_THREADS": "4"},
            workdir,
        )
        self.front = ServerProcess("front", frontconf.command(self.front_dir), env, workdir)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "HttpServer":
        if not self.front.alive():
            frontconf.prepare(
                data_dir=self.front_root, port=self.port, bind="127.0.0.1",
                max_attachment=int(self.env.get("ATTACHMENT_MAX_SIZE", django_settings.ATTACHMENT_MAX_SIZE)),
                tls=(self.tls.cert, self.tls.key) if self.tls else None,
                broker_auth_port=self.broker_auth_port,
            )
            self.front.start()
        super().start()
        wait_until(self._answers, 20, f"granian behind nginx on port {self.port}", interval=0.05)
        return self

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """For HTTPS: one that trusts the certificate's CA."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca) if self.tls.ca else None)

    def stop(self) -> None:
        super().stop()
        self.front.stop()
        shutil.rmtree(self.front_root, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return f"{super().log_tail(lines)}\n--- nginx\n{self.front.log_tail(lines // 2)}"

    def _answers(self) -> bool:
        if not self.alive():
            raise AssertionError(f"granian died:\n{self.log_tail()}")
        if not self.front.alive():
            raise AssertionError(f"nginx died:\n{self.front.log_tail()}")
        return django_answers(self.url, ssl_context=self.ssl_context)


def django_answers(url: str, *, ssl_context: ssl.SSLContext | None = None) -> bool:
    """Whether Django answers `/health/` through the front server at `url`, whatever its
    body says (nginx's own 503 `unavailable`: granian is not up yet)."""
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=2, context=ssl_context):
            return True
    except urllib.error.HTTPError as error:
        return not (error.code == 503 and b'"unavailable"' in error.read())
    except OSError:
        return False


class ProcessStack:
    """The server's own processes, a relay and granian, on a database and broker of the
    caller's choosing, for a test that kills and restarts them (tests/support/faults.py).

        stack = ProcessStack(database_url=url, broker=broker, workdir=path).start()
        stack.relay.kill()      # SIGKILL
        stack.start_relay()     # a new relay process, same environment, same log file

    The session's `relay_process` and `http_server` are not involved.
    """

    def __init__(self, *, database_url: str, broker, workdir: Path, web_workers: int = 2,
                 env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.broker = broker
        self.workdir = Path(workdir)
        self.env = server_env(database_url=database_url, broker=broker, data_dir=self.workdir) | (env or {})
        self.relay = ServerProcess("relay", [sys.executable, "manage.py", "relay"], self.env, self.workdir)
        self.http = HttpServer(self.env, self.workdir, workers=web_workers,
                               broker_auth_port=getattr(broker, "auth_port", None))
        self.url = self.http.url

    def start(self, timeout: float = 30.0) -> ProcessStack:
        """Start both; return once `/health/` says ok (relay running, broker up)."""
        self.relay.start()
        self.http.start()
        self.wait_healthy(timeout)
        return self

    def start_relay(self) -> ServerProcess:
        """Start a new relay process (after `relay.kill()`); returns once it is spawned."""
        if self.relay.alive():
            raise RuntimeError("the relay is still running")
        return self.relay.start()

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.url}/health/", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, {}
        except (OSError, ValueError):
            return 0, {}

    def wait_healthy(self, timeout: float) -> None:
        try:
            wait_until(lambda: self.health()[1].get("status") == "ok", timeout, "/health/ to say ok",
                       interval=0.05)
        except AssertionError:
            raise AssertionError(
                f"stack not healthy: {self.health()}\n--- relay\n{self.relay.log_tail()}"
                f"\n--- web\n{self.http.log_tail()}"
            ) from None

    def stop(self) -> None:
        self.http.stop()
        self.relay.stop()


class NoBroker:
    """What `server_env` reads of a broker, for a process that talks to none (`migrate`)."""

    host, port, ws_port = "127.0.0.1", 1, 2
    admin_username, admin_password = "nobody", "unused"

    def env(self) -> dict[str, str]:
        return {}


def migrated_database(cluster, name: str, *, data_dir: Path) -> str:
    """Create database `name` in `cluster` (a tests.support.postgres.PostgresCluster) and
    migrate it as `make run` does, with `manage.py migrate` in a process of its own; its URL.
    For stacks that need a database no other relay drains."""
    import psycopg

    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = cluster.url(name)
    env = server_env(database_url=url, broker=NoBroker(), data_dir=data_dir)
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def http_server(test_database_url, broker, tmp_path_factory) -> Iterator[HttpServer]:
    """The HTTP API over real sockets (granian behind nginx), on the test database and broker."""
    workdir = tmp_path_factory.mktemp("web")
    env = server_env(database_url=test_database_url, broker=broker, data_dir=workdir)
    # On RabbitMQ, its auth checks come to this front's loopback listener.
    server = HttpServer(env, workdir, broker_auth_port=getattr(broker, "auth_port", None)).start()
    yield server
    server.stop()


@pytest.fixture
def live_stack(relay, http_server, broker):
    """Everything running, over real sockets: `.url` (HTTP), `.broker`, `.relay`."""
    session_broker = broker

    class Stack:
        url = http_server.url
        broker = session_broker

    Stack.relay = relay
    Stack.http = http_server
    return Stack


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None,
         timeout: float = 10) -> tuple[int, dict | None]:
    """One HTTP request to a server process over a real socket: (status, JSON body);
    status 0 when no answer came (connection refused, timeout)."""
    status, _, answer = call_with_headers(url, method, body, token, timeout)
    return status, answer


def call_with_headers(url: str, method: str = "GET", body: dict | None = None, token: str | None = None,
                      timeout: float = 10) -> tuple[int, Message, dict | None]:
    """`call`, with the answer's headers: (status, headers, JSON body). The headers are
    looked up whatever the case of their names (`headers.get("Retry-After")`), as HTTP
    says: granian sends them in lower case."""
    request = urllib.request.Request(url, method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, data, timeout=timeout) as response:
            raw = response.read()
            return response.status, response.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, error.headers, json.loads(raw) if raw else None
        except ValueError:
            return error.code, error.headers, {"not_json": raw[:200].decode(errors="replace")}
    except (OSError, ValueError):
        return 0, Message(), None
