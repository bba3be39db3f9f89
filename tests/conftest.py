"""The suite's processes and fixtures.

The process fixtures live in `tests/support/` as pytest plugins: a throw-away PostgreSQL
cluster (postgres.py), the broker, Mosquitto started from `broker/mosquitto.conf`
(mosquitto.py) or with `--broker=rabbitmq` a RabbitMQ node from `broker/rabbitmq.conf`
(rabbitmq.py; the switch: brokers.py), the relay and HTTP server processes pointed at
both (stack.py), a Redis for the REDIS_URL path (redis.py), and stacks of their own for
the fault tests, which kill and restart processes (faults.py).

Two tiers: tests that go through HTTP and, where they say so, the real relay, broker and
paho clients; and a fast service tier (`tests/*/services/`) that calls services directly
and asserts on what they queued (`outbox`).
"""

import json
from dataclasses import dataclass

import pytest
from django.core.cache import cache
from django.db.models import Max

from accounts.authentication import TOKEN_CACHE

from chatserver.broker_access import AccessOp, access_op_from_json
from chatserver.events import EventType
from chatserver.models import OutboxEvent
from tests.support import mqtt as mqtt_probe

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.brokers",
    "tests.support.mosquitto",
    "tests.support.rabbitmq",
    "tests.support.stack",
    "tests.support.faults",
    "tests.support.redis",
    "tests.support.rabbit_auth",
]


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    # Rate-limit buckets live in the database (chat_rate_bucket: rolled back or flushed
    # with every test's data) or, for the tests of the Redis path, in a Redis of their
    # own (tests/support/redis.py flushes it); Django's cache is cleared all the same,
    # and so is the message POST's token cache (its devices went with the last test's).
    cache.clear()
    TOKEN_CACHE.clear()


@dataclass(frozen=True)
class Queued:
    """One outbox row as the relay will read it."""

    type: EventType | None
    chat: int | None
    version: int | None
    data: dict | None
    user_ids: list[int]
    chat_topic: int | None
    access: list[AccessOp]


class OutboxCapture:
    """The outbox rows queued since the fixture started (or since `clear()`).

    For tests that call services directly: their transaction is never committed, so no
    relay ever sees these rows, and the test reads exactly what its services queued.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._after = OutboxEvent.objects.aggregate(last=Max("id"))["last"] or 0

    @property
    def rows(self) -> list[Queued]:
        rows = []
        for row in OutboxEvent.objects.filter(id__gt=self._after).order_by("id"):
            event = json.loads(row.payload) if row.payload else {}
            rows.append(
                Queued(
                    type=EventType(event["type"]) if event else None,
                    chat=event.get("chat"),
                    version=event.get("version"),
                    data=event.get("data"),
                    user_ids=sorted(row.user_ids),
                    chat_topic=row.chat_id,
                    access=[access_op_from_json(op) for op in row.access],
                )
            )
        return rows

    @property
    def types(self) -> list[EventType | None]:
        return [row.type for row in self.rows]


@pytest.fixture
def no_backpressure_probe(settings):
    """For tests that count a request's queries: the back-pressure verdict's probe (up to
    two queries every CHECK_EVERY per process, chatserver/backpressure.py) would land in a
    count at random; it is off."""
    settings.INGEST_MAX_OUTBOX_AGE = 0


@pytest.fixture
def outbox(db) -> OutboxCapture:
    return OutboxCapture()


@pytest.fixture(autouse=True)
def _events_match_the_contract():
    """Every event the suite queues, and every one its MQTT probes receive, matches its
    schema in docs/asyncapi.yaml (chatserver/contract.py). Queued events are checked by
    `enqueue` itself (`OUTBOX_CHECK_SCHEMAS` in tests/settings.py, which the relay and
    granian processes use too: tests/support/stack.py); received ones by the probe, which
    collects what fails to fail the test here."""
    mqtt_probe.CONTRACT_FAILURES.clear()
    yield
    failures = list(mqtt_probe.CONTRACT_FAILURES)
    mqtt_probe.CONTRACT_FAILURES.clear()
    if failures:
        pytest.fail("events received over MQTT do not match docs/asyncapi.yaml:\n" + "\n".join(failures[:5]))
