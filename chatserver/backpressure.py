"""Back-pressure on ingest: while delivery is behind, new messages wait at the door.

The relay drains the outbox as fast as it can. When messages come in faster than it
delivers them (a burst past its capacity, a big group at full speed), the oldest
undelivered event ages without bound: every later message is late, and accepting more
only makes it later, for everybody. So while the relay is running and the broker
answering it, and yet the oldest event in the outbox, queued since the broker last
started answering, is older than `INGEST_MAX_OUTBOX_AGE` seconds (the backlog an outage
leaves is drained without refusing anything: `delivery_behind`), a message
POST is refused with 503 `overloaded` and
`Retry-After` (`chatserver.errors.Overloaded`): the phone keeps the message, sends it
again with the same `client_id` (so a retry never makes two), and delivery catches up
meanwhile. Nothing is written for a refused POST.

While the relay or the broker is down, messages are accepted and queued as ever: that
is an outage (`/health/` says degraded, delivery resumes by itself once it is back), not
overload, and refusing them would only move the queue onto the phones.

Why a refusal rather than slower acceptance: a POST held back would hold a web
thread (8 per host) for as long, and stop every other request with it; a 503 costs one
cheap answer and says plainly when to come back.

The verdict costs two indexed queries (the outbox's oldest row, then the relays'
heartbeat rows) at most once per `CHECK_EVERY` per process, not per request.

With several relay partitions (RELAY_PARTITIONS) the age is the whole outbox's oldest
row, not each partition's, and the relays must all be running with the broker answering
each for longer than the threshold: the verdict stays one cached boolean per process and
two queries (one per partition would be a query per partition and a verdict per chat,
known only once the view has read the chat). The coarse side: one partition behind (one
very busy group) holds back the senders of every chat until it catches up.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.utils import timezone

from chatserver import outbox
from chatserver.errors import Overloaded
from chatserver.models import OutboxEvent

# How long one process keeps its verdict (seconds): what a gate that opens lets in before
# it closes again is this long's worth of the senders' rate, late behind the backlog.
CHECK_EVERY = 0.2

_lock = threading.Lock()
_verdict: tuple[float, bool] = (float("-inf"), False)  # (monotonic time checked, behind)


def check() -> None:
    """Raise Overloaded while delivery is behind (see the module); return otherwise."""
    if settings.INGEST_MAX_OUTBOX_AGE <= 0:
        return
    global _verdict
    checked_at, behind = _verdict
    now = time.monotonic()
    if now - checked_at >= CHECK_EVERY:
        with _lock:
            checked_at, behind = _verdict
            if now - checked_at >= CHECK_EVERY:
                behind = delivery_behind()
                _verdict = (time.monotonic(), behind)
    if behind:
        raise Overloaded()


def delivery_behind() -> bool:
    """Whether messages come in faster than they are delivered: the relay works (running,
    the broker answering it), and the oldest event in the outbox was queued while it
    worked and has waited longer than INGEST_MAX_OUTBOX_AGE.

    An event queued before the broker last started answering the relay (an outage's
    backlog; a relay that has just taken over) is not overload: it is drained without
    refusing anybody, however long that takes, and what comes meanwhile waits behind it.
    Refusing then would turn a recovery into minutes of 503s for every sender."""
    oldest = OutboxEvent.objects.order_by("id").values_list("created_at", flat=True).first()
    if oldest is None:
        return False
    if (timezone.now() - oldest).total_seconds() <= settings.INGEST_MAX_OUTBOX_AGE:
        return False
    statuses = outbox.relay_heartbeats()
    # With several partitions: since when the broker has answered every relay (the
    # latest of their starts); a partition without one is an outage, not overload.
    ups = [status.broker_up_since for status in statuses]
    if len(ups) < settings.RELAY_PARTITIONS or None in ups:
        return False
    if oldest < max(ups):
        return False
    state = outbox.relay_status_of(statuses)
    return (state["relay"], state["broker"]) == ("running", "up")


def forget() -> None:
    """Drop this process's verdict (tests)."""
    global _verdict
    _verdict = (float("-inf"), False)
