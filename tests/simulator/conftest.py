"""The `sim` fixture of the simulator's tests (tests/support/sim.py has their helpers)."""

import os
import subprocess

import pytest

from tests.support.sim import CHAT_SIM, SIM_SOURCE


@pytest.fixture
def sim(live_stack, tmp_path):
    """`sim(*args)` runs chat-sim against the live stack; returns the CompletedProcess."""
    assert CHAT_SIM.exists(), f"{CHAT_SIM} missing: requirements.txt installs ./android-client-sim"
    # This checkout's simulator, whichever checkout the virtualenv installed it from
    # (its editable finder comes after PYTHONPATH).
    path = os.pathsep.join(p for p in (str(SIM_SOURCE), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "CHAT_SIM_HOME": str(tmp_path / "home"), "CHAT_SIM_SERVER": live_stack.url,
           "PYTHONPATH": path}

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([str(CHAT_SIM), *args], env=env, capture_output=True, text=True, timeout=timeout)

    run.env = env
    return run
