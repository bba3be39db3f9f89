"""`make run`'s own script (scripts/run.sh, the Procfile under honcho) on a fresh data
directory with the zero-setup defaults: SQLite, Mosquitto from the project's config.
Every other test starts the processes itself; this one checks that the command a user
types starts them all, that the stack serves and delivers, and that SIGTERM (what
Ctrl-C sends honcho's group) stops every one of them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.mqtt import MqttProbe
from tests.support.postgres import free_port
from tests.support.stack import ROOT, call, child_pids, running, wait_until

# What the suite's own environment says about these would point run.sh at the suite's
# database and broker, or at its settings.
NOT_INHERITED = ("MQTT_", "DATABASE_", "HTTP_", "BROKER", "RABBITMQ_", "DJANGO_", "REDIS_", "FCM_", "DATA_DIR")


def descendants(pid: int) -> set[int]:
    """The live processes below `pid` (honcho starts each of its own in a session of its
    own: a process group does not find them)."""
    found, frontier = set(), [pid]
    while frontier:
        children = [child for parent in frontier for child in child_pids(parent)]
        found.update(children)
        frontier = children
    return {p for p in found if running(p)}


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_make_run_starts_every_process_serves_delivers_and_stops_on_ctrl_c():
    # given: scripts/run.sh on free ports and a data directory of its own (nginx's workers
    # must reach its front/ directory: not under pytest's 0700 temp dirs)
    root = Path(tempfile.mkdtemp(prefix="chat-make-run-"))
    os.chmod(root, 0o711)
    ports = {"HTTP_PORT": free_port(), "MQTT_PORT": free_port(), "MQTT_WS_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    env |= {name: str(port) for name, port in ports.items()}
    env |= {"DATA_DIR": str(root / "var"), "ENV_FILE": "", "HTTP_BIND": "127.0.0.1"}
    url = f"http://127.0.0.1:{ports['HTTP_PORT']}"
    log_path = root / "make-run.log"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def healthy() -> bool:
        if stack.poll() is not None:
            raise AssertionError(f"make run exited ({stack.returncode}):\n{log_tail()}")
        health = call(f"{url}/health/")[1]
        return health is not None and health.get("status") == "ok"

    with open(log_path, "wb") as log:
        stack = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    processes: set[int] = set()
    phone = None
    try:
        try:
            wait_until(healthy, 90, "make run's /health/ to say ok", interval=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}; health: {call(f'{url}/health/')}\n{log_tail()}") from None
        processes = descendants(stack.pid)
        commands = " | ".join(cmdline(pid) for pid in processes)
        for part in ("mosquitto", "nginx", "granian", "worker relay", "worker presence", "worker push",
                     "worker previews"):
            assert part in commands, f"no {part} among make run's processes: {commands}"

        # when: two phones sign up, one listens over MQTT, the other sends
        _, alice = call(f"{url}/accounts/signup/", "POST", {"username": "alice-run", "password": "pass word 123"})
        status, bob = call(f"{url}/accounts/signup/", "POST", {"username": "bob-run", "password": "pass word 123"})
        assert status == 201, bob
        status, chat = call(f"{url}/chats/", "POST", {"members": [bob["id"]]}, alice["token"])
        assert status == 201, chat
        m = bob["mqtt"]
        assert m["port"] == ports["MQTT_PORT"]
        phone = MqttProbe("127.0.0.1", m["port"])
        assert phone.connect(m["username"], m["password"], m["client_id"]) == 0
        assert phone.subscribe(m["user_topic"]) == 1
        status, message = call(f"{url}/chats/{chat['id']}/messages/", "POST", {"content": "hi bob"}, alice["token"])
        assert status == 201, message

        # then: it arrives on bob's topic
        received = phone.wait_for(1, timeout=10)
        assert [json.loads(r.payload)["data"] for r in received] == [message]
    finally:
        if phone is not None:
            phone.close()
        # when: Ctrl-C (SIGINT to the terminal's foreground group: run.sh, exec'd into honcho)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.pid, signal.SIGINT)
        try:
            stopped = stack.wait(20)
        except subprocess.TimeoutExpired:
            stopped = None
        deadline = time.monotonic() + 10
        while (left := {p for p in processes if running(p)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left | ({stack.pid} if stopped is None else set()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # then: make run is gone, and nothing it started is left (nginx, granian and its
    # workers, Mosquitto, the relay, presence, push and previews workers)
    assert stopped is not None, f"make run still running 20 s after Ctrl-C:\n{log_tail()}"
    assert left == set(), f"left running after make run stopped: {sorted(left)}\n{log_tail()}"
    shutil.rmtree(root, ignore_errors=True)
