"""Presence: each device's `online`/`away`/`offline` folded into one state per user.

Devices publish their state (retained) on `chat/presence/<user>/<client id>`, with a
retained Last Will `offline`; the presence worker (`accounts.workers`) subscribes and
feeds `PresenceTracker`, then applies what it decides with `presence_apply`. A user is online if any device is, else
away if any is, else offline. Flapping is damped: a user's friends hear at most one
change per `min_interval`, and only if the state differs from what they were last told.
"""

import re
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Device, Friendship, User
from accounts.shapes import user_data
from chatserver import outbox
from chatserver.events import Event, EventType

STATES = ("online", "away", "offline")
# Device client ids are chat-<user id>-<device id> (accounts.models.Device).
_CLIENT_ID = re.compile(r"^chat-(\d+)-(\d+)$")
# A user may publish on chat/presence/<own id>/+ under any client id; only its real
# devices count, and at most this many per user are tracked.
MAX_DEVICES = 32
# A device state is a word: anything longer is not one.
MAX_PAYLOAD = 16
# Users whose changes are applied in one transaction at most.
APPLY_BATCH = 100


def _device_id(user_id: int, client_id: str) -> int | None:
    """The device id in `client_id` if it is one of the user's devices' (whether it
    exists or not), else None."""
    match = _CLIENT_ID.match(client_id)
    return int(match.group(2)) if match is not None and int(match.group(1)) == user_id else None


def is_device(user_id: int, client_id: str) -> bool:
    """Whether `client_id` is one of the user's devices' (whether it exists or not)."""
    return _device_id(user_id, client_id) is not None


def device_state(payload: bytes) -> str | None:
    """The state a device's presence payload says (STATES), or None if it says none. An
    empty payload (a cleared retained message, e.g. after logout) is `offline`."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        state = payload.decode().strip().lower() if payload else "offline"
    except UnicodeDecodeError:
        return None
    return state if state in STATES else None


def fold(states) -> str:
    states = set(states)
    return "online" if "online" in states else "away" if "away" in states else "offline"


@dataclass
class _User:
    devices: dict[str, str] = field(default_factory=dict)
    # When each device's report stops counting without a refresh (the tracker's clock).
    expires: dict[str, float] = field(default_factory=dict)
    told: str | None = None  # what was last applied (None: not since start)
    told_at: float = float("-inf")


class PresenceTracker:
    """Pure state: device reports in, per-user decisions out (no I/O, clock passed in)."""

    def __init__(self, *, min_interval: float = 2.0) -> None:
        self.min_interval = min_interval
        self.users: dict[int, _User] = {}
        # Devices whose state changed or was refreshed since `take_devices`:
        # device id -> (state, until when it holds; None for offline).
        self.devices_seen: dict[int, tuple[str, float | None]] = {}

    def observe(
        self, user_id: int, client_id: str, payload: bytes, *, now: float = 0.0, ttl: float = float("inf")
    ) -> bool:
        """Record one device report; False if it is not a valid one (and is ignored).

        An empty payload (a cleared retained message, e.g. after logout) means the device
        is gone. An `online` or `away` report holds for `ttl` from `now`: a device that
        stops refreshing it (it vanished, or left without its Will) is gone then
        (`expire`).
        """
        device_id, state = _device_id(user_id, client_id), device_state(payload)
        if device_id is None or state is None:
            return False
        user = self.users.setdefault(user_id, _User())
        if state == "offline":
            user.devices.pop(client_id, None)
            user.expires.pop(client_id, None)
            self.devices_seen[device_id] = (state, None)
        elif client_id in user.devices or len(user.devices) < MAX_DEVICES:
            user.devices[client_id] = state
            user.expires[client_id] = now + ttl
            self.devices_seen[device_id] = (state, now + ttl)
        return True

    def disconnected(self, user_id: int, client_id: str) -> None:
        """A device's connection ended (its `offline`), for the database only: it counts
        as not connected (pushes wake it) while its user's state is not decided yet (the
        presence worker holds a live `offline` back a moment, OFFLINE_SETTLE)."""
        device_id = _device_id(user_id, client_id)
        if device_id is not None:
            self.devices_seen[device_id] = ("offline", None)

    def expire(self, now: float) -> list[tuple[int, str]]:
        """Forget the devices whose report ran out; return them, (user id, client id)."""
        gone = []
        for user_id, user in self.users.items():
            for client_id in [c for c, until in user.expires.items() if until <= now]:
                del user.devices[client_id], user.expires[client_id]
                self.devices_seen[_device_id(user_id, client_id)] = ("offline", None)
                gone.append((user_id, client_id))
        return gone

    def hold_until(self, until: float) -> set[int]:
        """Make every device's report run out at `until`, unless refreshed; return the
        users that have devices. After a reconnection to the broker: nothing known before
        it is trusted for longer, and nothing for shorter either, since what devices sent
        while the broker could not be heard was lost (a report that ran out meanwhile has
        not been expired: the worker expires nothing while it is disconnected)."""
        users = set()
        for user_id, user in self.users.items():
            for client_id in user.expires:
                user.expires[client_id] = until
                users.add(user_id)
        return users

    def take_devices(self) -> dict[int, tuple[str, float | None]]:
        """The devices seen since the last call: device id -> (state, until when it holds
        on the tracker's clock, None for offline), for the database."""
        seen, self.devices_seen = self.devices_seen, {}
        return seen

    def due(self, now: float, *, limit: int | None = None) -> list[tuple[int, str]]:
        """Users whose folded state differs from what was last applied and may be applied
        now (throttled), `limit` of them at most (the others stay due); marks them applied."""
        decisions = []
        for user_id, user in self.users.items():
            if limit is not None and len(decisions) >= limit:
                break
            state = fold(user.devices.values())
            if state != user.told and now - user.told_at >= self.min_interval:
                user.told, user.told_at = state, now
                decisions.append((user_id, state))
        return decisions

    def forget_applied(self) -> None:
        """Decide every user again at the next `due` (throttling still holds): what was
        applied may have been lost, or changed by someone else, meanwhile."""
        for user in self.users.values():
            user.told = None

    def is_present(self, user_id: int, client_id: str) -> bool:
        user = self.users.get(user_id)
        return user is not None and client_id in user.devices

    def known_present(self) -> set[int]:
        return {uid for uid, user in self.users.items() if user.devices}


def presence_apply(*, user_id: int, presence: str) -> bool:
    """Store a user's presence and `last_seen`, and tell it and its friends
    (`presence.updated`) if it changed. Returns whether it changed."""
    return bool(presence_apply_many(changes=[(user_id, presence)]))


def presence_apply_many(*, changes: list[tuple[int, str]]) -> list[int]:
    """`presence_apply` for many users in one transaction (a burst of phones connecting
    costs one transaction per batch, not per user); returns the users that changed.

    Users are locked in id order, so two batches cannot deadlock.
    """
    wanted = dict(changes)
    if not wanted:
        return []
    with transaction.atomic():
        users = list(User.objects.select_for_update().filter(id__in=wanted).order_by("id"))
        changed = [u for u in users if u.presence != wanted[u.id]]
        if not changed:
            return []
        # Last seen: now, whether the user just came or just went.
        now = timezone.now()
        for state in {wanted[u.id] for u in changed}:
            User.objects.filter(id__in=[u.id for u in changed if wanted[u.id] == state]).update(
                presence=state, last_seen=now
            )
        friends: dict[int, list[int]] = {u.id: [] for u in changed}
        for user_id, friend_id in Friendship.objects.filter(user_id__in=friends).values_list("user_id", "friend_id"):
            friends[user_id].append(friend_id)
        for user in changed:
            user.presence, user.last_seen = wanted[user.id], now
            outbox.enqueue(
                event=Event(type=EventType.PRESENCE_UPDATED, data=user_data(user)),
                user_ids=[user.id, *friends[user.id]],
            )
    return [u.id for u in changed]


def device_presence_store(*, states: dict[int, tuple[str, datetime | None]]) -> None:
    """Store what devices last reported: device id -> (state, until when it holds without
    a refresh). `Device.presence_expires_at` is what "a live connection" means for pushes
    (`Device.connected_q`)."""
    groups: dict[tuple[str, datetime | None], list[int]] = {}
    for device_id, (state, until) in states.items():
        groups.setdefault((state, None if state == User.Presence.OFFLINE else until), []).append(device_id)
    for (state, until), ids in groups.items():
        Device.objects.filter(id__in=ids).update(presence=state, presence_expires_at=until)


def device_presence_hold(*, until: datetime, ran_out_since: datetime | None = None) -> int:
    """The presence worker (re)connected: make every device's presence run out at `until`
    at the latest (what the database holds from before cannot be trusted for long), and,
    with `ran_out_since` (when the worker stopped hearing the broker), the presence of
    devices that ran out since then at `until` too (their refreshes were lost: they are
    asked again before they count as gone). One statement; how many devices."""
    held = Q(presence_expires_at__gt=until)
    if ran_out_since is not None:
        held |= Q(presence_expires_at__gte=ran_out_since) & ~Q(presence=User.Presence.OFFLINE)
    return Device.objects.filter(held).update(presence_expires_at=until)


def users_not_offline() -> list[int]:
    """The users the database has online or away (whom a restarted presence worker asks
    to say so again)."""
    return list(User.objects.exclude(presence=User.Presence.OFFLINE).values_list("id", flat=True))


def presence_reset_absent(*, present: set[int]) -> list[int]:
    """Set offline every user the database has online or away but who has no device
    present (after a restart of the server or the broker, nobody stays stuck online), and
    their devices: none of them reported since the (re)connection, so none is connected
    (where retained states are not handed over, as on RabbitMQ 3.10 for a wildcard
    subscription, this is the only word the worker has on them)."""
    stale = list(
        User.objects.exclude(presence=User.Presence.OFFLINE).exclude(id__in=present).values_list("id", flat=True)
    )
    for start in range(0, len(stale), APPLY_BATCH):
        batch = stale[start : start + APPLY_BATCH]
        Device.objects.filter(user_id__in=batch).exclude(presence=User.Presence.OFFLINE).update(
            presence=User.Presence.OFFLINE, presence_expires_at=None
        )
        presence_apply_many(changes=[(uid, User.Presence.OFFLINE) for uid in batch])
    return stale
