"""The simulator's test helpers: where `chat-sim` is, and what its tests share (the
`sim` fixture itself is in tests/simulator/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

CHAT_SIM = Path(sys.executable).parent / "chat-sim"
SIM_SOURCE = Path(__file__).resolve().parents[2] / "android-client-sim"
PASSWORD = "pass word 123"


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_match_the_contract(items: list[dict]) -> None:
    """The messages and events `listen --json` showed, live or fetched, have the data
    docs/asyncapi.yaml gives their type (ValueError names what does not)."""
    from chatserver.contract import check_data

    shown = [i for i in items if i["kind"] in ("message", "event")]
    for item in shown:
        check_data(item["type"], item["data"])
    assert shown, "nothing to check"


class Listening:
    """`chat-sim -p <profile> listen --json` in the background, its lines collected."""

    def __init__(self, sim, profile: str, *extra: str) -> None:
        self.process = subprocess.Popen([str(CHAT_SIM), "-p", profile, "listen", "--json", "--duration", "30", *extra],
                                        env=sim.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.caught_up = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.caught_up.wait(15), self.process.stderr.read() if self.process.poll() is not None else self.lines

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(json.loads(line))
            if self.lines[-1]["type"] == "caught_up":
                self.caught_up.set()

    def wait_for(self, predicate, timeout: float = 5) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if predicate(line)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"not shown within {timeout}s: {self.lines}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.reader.join(5)
