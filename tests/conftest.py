"""The suite's processes and fixtures.

The process fixtures live in `tests/support/` as pytest plugins: a throw-away PostgreSQL
cluster (postgres.py), Mosquitto started from `broker/mosquitto.conf` (mosquitto.py) and
the relay and HTTP server processes pointed at both (stack.py), and stacks of their own
for the fault tests, which kill and restart processes (faults.py).
"""

import pytest
from django.core.cache import cache

from tests.support.factories import FAST_HASHER

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.mosquitto",
    "tests.support.stack",
    "tests.support.faults",
]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The real hasher costs ~0.5 s a call by design; the suite signs up hundreds of users.
    settings.PASSWORD_HASHERS = [FAST_HASHER]


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    # Throttle counters live in the cache: each test starts with none.
    cache.clear()
