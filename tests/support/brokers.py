"""The suite's broker switch: one suite, both brokers.

Used as a pytest plugin (tests/conftest.py). `--broker=mosquitto|rabbitmq` (default
mosquitto, or the environment's TEST_BROKER) chooses what the session fixture `broker`
yields: the session's Mosquitto (tests/support/mosquitto.py) or its RabbitMQ node
(tests/support/rabbitmq.py), which have the same interface. Tests and fixtures that need
a broker take `broker`; those that need one of their own (fault stacks, TLS, outages)
take `new_broker`, which makes an unstarted one of the selected kind.

Tests about Mosquitto itself (dynamic security, the login guard, its config) are marked
`mosquitto_only` and skipped, with the reason, under `--broker=rabbitmq`. Tests of the
product on a RabbitMQ cluster (a node lost under a phone's session and the relay) are
marked `rabbitmq_only`, and run only under `--broker=rabbitmq`: they boot the session's
three-node cluster, about 35 s, which a Mosquitto run should not pay for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BROKERS = ("mosquitto", "rabbitmq")
MOSQUITTO_ONLY_REASON = ("about Mosquitto itself (dynamic security, login guard, its config) or a behaviour RabbitMQ 3.10 "
                         "does not share (docs/mqtt.md): not run with --broker=rabbitmq")
RABBITMQ_ONLY_REASON = "the product on a RabbitMQ cluster: run with --broker=rabbitmq"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker", choices=BROKERS, default=os.environ.get("TEST_BROKER", "mosquitto").strip().lower() or "mosquitto",
        help="the broker the suite runs against (default: $TEST_BROKER, else mosquitto)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"mosquitto_only: {MOSQUITTO_ONLY_REASON}")
    config.addinivalue_line("markers", f"rabbitmq_only: {RABBITMQ_ONLY_REASON}")
    # argparse checks choices on the command line only, not a default from the environment.
    if config.getoption("--broker") not in BROKERS:
        raise pytest.UsageError(f"TEST_BROKER must be one of {', '.join(BROKERS)}, got {config.getoption('--broker')!r}")


# The fixtures through which a test reaches the selected broker (`relay`, `live_stack` and
# the stacks of tests/support/ all take one of them).
BROKER_FIXTURES = frozenset({"broker", "new_broker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked for the other broker are skipped, with the reason. Under
    --broker=rabbitmq, only the tests that talk to the selected broker run, and those
    marked `rabbitmq_only`: the others (the service tier, RabbitMQ's own node and access
    tests, which start nodes of their own) do the same on either broker and ran with the
    default. `make test` runs the suite on Mosquitto, then this part of it on RabbitMQ."""
    kind = config.getoption("--broker")
    skipped = "mosquitto_only" if kind == "rabbitmq" else "rabbitmq_only"
    skip = pytest.mark.skip(reason=MOSQUITTO_ONLY_REASON if kind == "rabbitmq" else RABBITMQ_ONLY_REASON)
    selected, deselected = [], []
    for item in items:
        if (kind == "rabbitmq" and not item.get_closest_marker("rabbitmq_only")
                and not BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))):
            deselected.append(item)
            continue
        if item.get_closest_marker(skipped):
            item.add_marker(skip)
        selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """"mosquitto" or "rabbitmq": what the suite runs against."""
    return request.config.getoption("--broker")


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest, broker_kind: str):
    """The session's started broker of the selected kind (`mosquitto` or `rabbitmq`)."""
    return request.getfixturevalue(broker_kind)


@pytest.fixture(scope="session", autouse=True)
def _settings_name_the_broker(broker_kind: str) -> None:
    # The test process's own settings say which broker the suite runs against, as the
    # server processes' do (tests/support/stack.py server_env); nothing is started here.
    from django.conf import settings

    settings.BROKER = broker_kind
    if broker_kind == "rabbitmq":
        # As chatserver/settings.py decides it for BROKER=rabbitmq (it speaks no other):
        # for what the tests run in their own process (a Relay, a BrokerConnection).
        settings.MQTT_PROTOCOL = "3.1.1"


class BrokerFactory:
    """Makes an unstarted broker of the selected kind in a fresh directory of its own:
    `broker, workdir = new_broker("chat-fault-", tls=..., plaintext=...)`. The caller
    starts, stops and removes it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, prefix: str, **kwargs):
        if self.kind == "mosquitto":
            from tests.support.mosquitto import MosquittoBroker, make_workdir

            workdir = make_workdir(f"{prefix}mqtt-")
            return MosquittoBroker(workdir, **kwargs), workdir
        from tests.support.rabbitmq import RabbitNode, make_workdir

        workdir: Path = make_workdir(f"{prefix}rabbitmq-")
        return RabbitNode(workdir, **kwargs), workdir


@pytest.fixture(scope="session")
def new_broker(broker_kind: str) -> BrokerFactory:
    return BrokerFactory(broker_kind)
