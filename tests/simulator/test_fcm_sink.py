"""`chat-sim fcm-sink`: the QA stand-in for FCM, driven by the server's real FCM client."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from chatserver.fcm import FcmClient, FcmMessage, Outcome

CHAT_SIM = Path(sys.executable).parent / "chat-sim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_sink_writes_a_service_account_takes_a_push_from_the_real_client_and_prints_it(tmp_path):
    # given
    port, account = free_port(), tmp_path / "sa.json"
    sink = subprocess.Popen(
        [str(CHAT_SIM), "--home", str(tmp_path), "fcm-sink", "--port", str(port), "--write-service-account", str(account)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (account.exists() and account.read_text()):
            time.sleep(0.05)
        assert json.loads(account.read_text())["token_uri"] == f"http://127.0.0.1:{port}/token"
        client = FcmClient(project_id="qa", service_account_file=str(account), endpoint=f"http://127.0.0.1:{port}")

        # when
        result = client.send(FcmMessage(token="phone-1", data={"type": "message", "chat_id": "3"}))

        # then
        assert result.outcome == Outcome.SENT
    finally:
        sink.terminate()
        out, err = sink.communicate(timeout=10)
    assert "push to phone-1 (high): chat_id='3' type='message'" in out, err
