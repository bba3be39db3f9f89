"""A real Mosquitto for the tests, started from the project's own `broker/mosquitto.conf`.

Used as a pytest plugin (see tests/conftest.py): the session fixture `mosquitto` yields a
started `MosquittoBroker` on free ports of 127.0.0.1. The broker directory is prepared by
the same code as `make run` (`chatserver.brokerconf.prepare`). A missing `mosquitto`
binary fails the tests loudly; it never skips them.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from chatserver import brokerconf
from chatserver.tls import ServerTls

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0

# Brokers still running when the interpreter exits (a test run aborted outside fixture
# teardown) are killed: they run in their own session and would outlive it.
_running: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_running):
        broker.kill()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """One broker process; its directory, config and credentials live under `workdir`."""

    host = "127.0.0.1"

    def __init__(
        self, workdir: Path, *, tls: ServerTls | None = None, plaintext: bool = True,
        login_limit: brokerconf.LoginLimit = brokerconf.LoginLimit(),
    ) -> None:
        """`tls`: TLS listeners too, with that certificate (`tls_port`, `wss_port`);
        `login_limit`: the failed-login limit rendered into the config (the project's
        defaults unless a test needs a shorter cooldown)."""
        self.binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
        )
        if self.binary is None:
            raise RuntimeError(
                "mosquitto is not installed (Debian: apt-get install mosquitto); "
                "the broker tests need a real one"
            )
        self.workdir = Path(workdir)
        self.port = free_port()
        self.ws_port = free_port()
        while self.ws_port == self.port:
            self.ws_port = free_port()
        self.tls = tls
        self.tls_port = self.wss_port = None
        if tls is not None:
            taken = {self.port, self.ws_port}
            while self.tls_port is None or self.tls_port in taken:
                self.tls_port = free_port()
            taken.add(self.tls_port)
            while self.wss_port is None or self.wss_port in taken:
                self.wss_port = free_port()
        self.plaintext = plaintext
        self.admin_username = "chat-server"
        self.admin_password = secrets.token_urlsafe(24)
        self.conf_path = brokerconf.prepare(
            data_dir=self.workdir,
            mqtt_port=self.port,
            ws_port=self.ws_port,
            admin_username=self.admin_username,
            admin_password=self.admin_password,
            bind=self.host,
            tls=tls,
            tls_ports=(self.tls_port, self.wss_port) if tls else None,
            plaintext=plaintext,
            login_limit=login_limit,
        )
        self.broker_dir = self.conf_path.parent
        self.log_path = self.broker_dir / brokerconf.LOG_NAME
        # What Mosquitto prints before its log file is open (config errors, warnings).
        self.output_path = self.workdir / "mosquitto.out"
        self.process: subprocess.Popen | None = None

    # --- process control -------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the broker and return once the admin account can log in."""
        if self.running:
            raise RuntimeError("broker already running")
        with open(self.output_path, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the test run is not sent to it twice
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}\n{self.logs()}")
            if self.admin_can_login(timeout=min(1.0, max(deadline - time.monotonic(), 0.05))):
                return
            time.sleep(0.02)  # between connection attempts, not a wait for readiness
        self.kill()
        raise RuntimeError(f"mosquitto did not accept the admin within {timeout}s\n{self.logs()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence DB."""
        if not self.running:
            return
        self.process.send_signal(signal.SIGCONT)  # a frozen broker cannot handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"mosquitto ignored SIGTERM for {timeout}s") from None

    def kill(self) -> None:
        """Crash (SIGKILL): nothing saved since the last autosave."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung broker)."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- observation -----------------------------------------------------------------------

    def admin_can_login(self, timeout: float = 1.0) -> bool:
        """Whether a real MQTT login as the admin account succeeds now."""
        port, ca = (self.port, None) if self.plaintext else (self.tls_port, self.tls.ca)
        return connack(self.host, port, self.admin_username, self.admin_password, ca=ca, timeout=timeout) == 0

    def env(self) -> dict[str, str]:
        """What a server process must be told about this broker besides the MQTT ports
        and the admin (tests/support/stack.py `server_env`)."""
        return {"BROKER": "mosquitto"}

    def logs(self) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-20000:]}")
            except FileNotFoundError:
                pass
        return "\n".join(parts)


def connack(host: str, port: int, username: str | None, password: str | None, *,
            ca: Path | None = None, timeout: float = 1.0, client_id: str | None = None) -> int | None:
    """The answer an MQTT 3.1.1 login gets now, as paho 2 reports a 3.1.1 CONNACK (0:
    accepted, 134: bad user name or password, 135: not authorized), or None when no
    CONNACK came within `timeout` (nothing listening, the connection closed). `username`
    None: an anonymous login."""
    answer: list[int] = []
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"probe-admin-{secrets.token_hex(4)}",
        protocol=paho.MQTTv311,
    )
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, reason, p: answer.append(reason.value)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return None
    try:
        deadline = time.monotonic() + timeout
        while not answer and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                break
        return answer[0] if answer else None
    finally:
        client.disconnect()
        client.loop(timeout=0.05)
        sock = client.socket()
        if sock is not None:
            sock.close()


def make_workdir(prefix: str = "chat-mosquitto-") -> Path:
    """A private temp dir the `mosquitto` user can pass through (pytest's own is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o711)
    return path


@pytest.fixture(scope="session")
def mosquitto(request: pytest.FixtureRequest):
    """A started broker for the whole session; stopped (and its directory removed) at the end.

    The directory is kept when tests failed, for its log.
    """
    workdir = make_workdir()
    broker = MosquittoBroker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        if request.session.testsfailed:
            print(f"\nmosquitto directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
