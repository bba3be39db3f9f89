"""What `/health/` concludes from the relay's heartbeat row and the outbox (the real
relay and a frozen broker: tests/chatserver/test_faults.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from chatserver.models import OutboxEvent, RelayStatus

pytestmark = pytest.mark.django_db


def heartbeat(*, answered_ago: float | None, connected: bool = True) -> None:
    now = timezone.now()
    answered = None if answered_ago is None else now - timedelta(seconds=answered_ago)
    RelayStatus.objects.update_or_create(
        id=1, defaults={"broker_connected": connected, "heartbeat_at": now, "broker_answered_at": answered}
    )


def health() -> dict:
    response = APIClient().get("/health/")
    assert response.status_code == 200
    return response.json()


def test_ok_when_the_broker_answered_just_now_and_nothing_waits():
    heartbeat(answered_ago=0.5)

    body = health()

    assert (body["status"], body["relay"], body["broker"]) == ("ok", "running", "up")
    assert (body["outbox_pending"], body["outbox_oldest_age_s"]) == (0, 0.0)


def test_an_open_connection_to_a_broker_that_stopped_answering_is_down():
    # given: the socket is open (connected), but the last answer is 4 s old
    heartbeat(answered_ago=4.0, connected=True)

    body = health()

    assert (body["status"], body["relay"], body["broker"]) == ("degraded", "running", "down")


def test_a_broker_that_never_answered_is_down():
    heartbeat(answered_ago=None, connected=True)

    assert health()["broker"] == "down"


def test_degraded_once_the_oldest_pending_event_is_older_than_health_max_outbox_age(settings):
    # given: a broker that answers, and rows waiting 2 s and 7 s
    settings.HEALTH_MAX_OUTBOX_AGE = 5.0
    heartbeat(answered_ago=0.1)
    now = timezone.now()
    for age in (2, 7):
        OutboxEvent.objects.create(created_at=now - timedelta(seconds=age), payload="", access=[{"op": "x"}])

    body = health()

    # then: the oldest one counts
    assert body["status"] == "degraded"
    assert body["broker"] == "up"
    assert body["outbox_pending"] == 2
    assert 7.0 <= body["outbox_oldest_age_s"] < 8.0


def test_a_young_backlog_is_not_degraded(settings):
    settings.HEALTH_MAX_OUTBOX_AGE = 5.0
    heartbeat(answered_ago=0.1)
    OutboxEvent.objects.create(created_at=timezone.now() - timedelta(seconds=1), payload="", access=[])

    body = health()

    assert (body["status"], body["outbox_pending"]) == ("ok", 1)


def test_a_relay_that_stopped_reporting_is_down_whatever_it_said_last():
    heartbeat(answered_ago=0.0)
    RelayStatus.objects.filter(id=1).update(heartbeat_at=timezone.now() - timedelta(seconds=6))

    body = health()

    assert (body["status"], body["relay"], body["broker"]) == ("degraded", "down", "unknown")
