"""A sleeping phone gets its push: chat-sim against a stack with push on, FCM played by the
simulator's own `fcm-sink`, the real push worker process sending to it."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chat_sim.fcm_sink import FcmSink
from tests.support.faults import own_stack
from tests.support.sim import CHAT_SIM
from tests.support.stack import ProcessStack, ServerProcess

PASSWORD = "correct horse battery staple"


@pytest.fixture
def push_stack(fault_cluster, new_broker, tmp_path):
    """A stack of its own (faults.own_stack: relay, granian; and the presence and push
    workers) with push on."""
    with FcmSink() as sink:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        account = tmp_path / "fcm.json"
        account.write_text(json.dumps(sink.service_account(private_key_pem=key)))
        broker, broker_dir = new_broker("chat-push-")
        env = {"FCM_PROJECT_ID": "qa", "FCM_SERVICE_ACCOUNT_FILE": str(account), "FCM_ENDPOINT": sink.url}
        workers: list[ServerProcess] = []

        def start_workers(processes: ProcessStack) -> None:
            for name in ("presence", "push"):
                workers.append(ServerProcess(name, [sys.executable, "manage.py", "worker", name], processes.env,
                                             tmp_path).start())

        try:
            with own_stack(fault_cluster, broker, broker_dir, tmp_path, env=env, before_start=start_workers) as stack:
                yield stack, sink
        finally:
            for worker in workers:
                worker.stop()


@pytest.mark.slow
def test_a_phone_in_the_background_gets_its_push_and_shows_it_when_back(push_stack, tmp_path):
    # given: bob's phone registered a token with the sink, and listens with a background phase
    stack, sink = push_stack
    env = {**os.environ, "CHAT_SIM_HOME": str(tmp_path / "home"), "CHAT_SIM_SERVER": stack.url}

    def sim(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(CHAT_SIM), *args], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    sim("-p", "alice", "signup", "alice", "--password", PASSWORD)
    sim("-p", "bob", "signup", "bob", "--password", PASSWORD)
    chat = json.loads(sim("-p", "alice", "chats", "create", "bob", "--json").stdout)
    sim("-p", "bob", "push-token", "bob-phone", "--sink", sink.url)
    listener = subprocess.Popen(
        [str(CHAT_SIM), "-p", "bob", "--json", "listen", "--foreground", "2", "--background", "6",
         "--duration", "25"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[dict] = []
    away, pushed = threading.Event(), threading.Event()

    def read() -> None:
        for line in listener.stdout:
            lines.append(json.loads(line))
            if lines[-1].get("type") == "background":
                away.set()
            if lines[-1].get("type") == "push":
                pushed.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert away.wait(20), lines
        time.sleep(1.0)  # the Will has marked the phone gone (a cut connection)

        # when: alice writes while bob's phone sleeps
        sim("-p", "alice", "send", str(chat["id"]), "wake up")

        # then: the sink got the push for bob's phone, and bob's phone shows it once back
        (push,) = sink.wait_for(1, timeout=10)
        assert push.token == "bob-phone"
        assert (push.data["type"], push.data["chat_id"], push.data["preview"]) == ("message", str(chat["id"]), "wake up")
        assert pushed.wait(15), lines
        shown = next(line for line in lines if line.get("type") == "push")
        assert shown["data"]["preview"] == "wake up"
    finally:
        listener.terminate()
        listener.wait(10)
