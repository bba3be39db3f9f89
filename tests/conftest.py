"""The suite's processes and fixtures.

The process fixtures live in `tests/support/` as pytest plugins: a throw-away PostgreSQL
cluster (postgres.py), Mosquitto started from `broker/mosquitto.conf` (mosquitto.py) and
the relay and HTTP server processes pointed at both (stack.py).
"""

import pytest
from django.core.cache import cache

from tests.support import mqtt as mqtt_probe
from tests.support.factories import FAST_HASHER

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.mosquitto",
    "tests.support.stack",
]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The real hasher costs ~0.5 s a call by design; the suite signs up hundreds of users.
    settings.PASSWORD_HASHERS = [FAST_HASHER]


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    # Throttle counters live in the cache: each test starts with none.
    cache.clear()


@pytest.fixture(autouse=True)
def _events_match_the_contract(settings):
    """Every event the suite queues, and every one its MQTT probes receive, matches its
    schema in docs/asyncapi.yaml (chatserver/contract.py). Queued events are checked by
    `enqueue` itself (here and, through their environment, in the relay and gunicorn
    processes: tests/support/stack.py); received ones by the probe, which collects what
    fails to fail the test here."""
    settings.OUTBOX_CHECK_SCHEMAS = True
    mqtt_probe.CONTRACT_FAILURES.clear()
    yield
    failures = list(mqtt_probe.CONTRACT_FAILURES)
    mqtt_probe.CONTRACT_FAILURES.clear()
    if failures:
        pytest.fail("events received over MQTT do not match docs/asyncapi.yaml:\n" + "\n".join(failures[:5]))
