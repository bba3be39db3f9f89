"""Token authentication: `Authorization: Token <token>` (or `Bearer <token>`) is the device
whose token hash matches, and its user. `request.auth` is the Device, so logout knows which
device to end.

Every endpoint reads the device row (one `SELECT` joined to the user) on every request,
except the one hottest: a JSON message POST (`chats.views.ChatMessagesView`, which says
`token_cache = True`), which may take the device and user from a per-process
cache (`TOKEN_CACHE`). That is safe only because the message's write statement checks the
device again (`chats.send_sql.MAY_POST`: the device still exists with this token hash and
its user is active) and refuses with 401 `invalid_token`, writing nothing, when it does
not: a logout, a sign-out or a deactivation holds for the very next POST in every process,
whatever the cache holds. The view reads the device for itself before anything that is
not that statement could answer (a retry, an error: `device_confirm`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts.errors import TokenRevoked
from accounts.models import Device, User, hash_token

# `Device.last_seen_at` is written at most this often per device: the device list needs
# "when was this phone last used", not every request's time (and not a write per request
# on the send path).
LAST_SEEN_RESOLUTION = timedelta(minutes=1)

# The token cache: this many entries per process at most (the least recently used go
# first), each trusted for this long. The TTL bounds how stale the cached user fields are
# (a username or display name changed meanwhile) and how long a revoked token's entry
# lingers; it is no part of revocation, which the write statement checks every time.
TOKEN_CACHE_SIZE = 10_000
TOKEN_CACHE_TTL = 30.0
# The user fields a message POST reads (the rest are deferred: read on access, one query).
CACHED_USER_FIELDS = ("id", "username", "is_active", "is_staff", "display_name")

INVALID_TOKEN = "Invalid or revoked token."
USER_INACTIVE = "User inactive or deleted."


@dataclass(frozen=True)
class _Entry:
    device_id: int
    last_seen_at: datetime | None
    user: tuple  # CACHED_USER_FIELDS' values
    expires: float  # time.monotonic()


class TokenCache:
    """token hash -> (device id, last_seen_at, user fields): bounded LRU with a TTL, shared
    by a process's threads. Hands out fresh model instances: no request sees another's."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE, ttl: float = TOKEN_CACHE_TTL) -> None:
        self.size, self.ttl = size, ttl
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> Device | None:
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            if entry.expires <= time.monotonic():
                del self._entries[token_hash]
                return None
            self._entries.move_to_end(token_hash)
        user = User.from_db("default", CACHED_USER_FIELDS, entry.user)
        device = Device(id=entry.device_id, user_id=user.id, token_hash=token_hash, last_seen_at=entry.last_seen_at)
        device._state.adding, device._state.db = False, "default"
        device.user = user
        device.from_token_cache = True
        return device

    def put(self, device: Device) -> None:
        entry = _Entry(device.id, device.last_seen_at, tuple(getattr(device.user, f) for f in CACHED_USER_FIELDS),
                       time.monotonic() + self.ttl)
        with self._lock:
            self._entries[device.token_hash] = entry
            self._entries.move_to_end(device.token_hash)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, token_hash: str) -> None:
        with self._lock:
            self._entries.pop(token_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


TOKEN_CACHE = TokenCache()


def device_lookup(token_hash: str) -> Device:
    """The device with this token hash and its user, read now; AuthenticationFailed if
    there is none or its user is inactive."""
    try:
        device = Device.objects.select_related("user").get(token_hash=token_hash)
    except Device.DoesNotExist:
        raise exceptions.AuthenticationFailed(INVALID_TOKEN) from None
    if not device.user.is_active:
        raise exceptions.AuthenticationFailed(USER_INACTIVE)
    return device


def device_confirm(device: Device | None, *, read_anyway: bool = False) -> None:
    """TokenRevoked (401 `invalid_token`) unless `device` is still signed in: its row with
    this token hash, its user active (what `chats.send_sql.DEVICE_VALID` asks); the cache
    forgets it then. One query, for a device that came from the cache, or, with
    `read_anyway`, for any (a write that checked it was refused: was it the device?);
    nothing for None or for a device already read in this request. Once confirmed it
    counts as read in this request (no second query for the same answer)."""
    if device is None or not (read_anyway or getattr(device, "from_token_cache", False)):
        return
    active = (
        Device.objects.filter(id=device.id, token_hash=device.token_hash, user_id=device.user_id)
        .values_list("user__is_active", flat=True)
        .first()
    )
    if not active:
        TOKEN_CACHE.discard(device.token_hash)
        raise TokenRevoked() if active is None else TokenRevoked(USER_INACTIVE)
    device.from_token_cache = False


def device_cached(token_hash: str) -> Device | None:
    """The device of a request that may take it from the cache (see the module), from
    TOKEN_CACHE, its `last_seen_at` written when stale; None when the cache does not hold
    it (then `device_lookup` reads it, and it is put in the cache)."""
    device = TOKEN_CACHE.get(token_hash)
    if device is not None and _touch(device):
        TOKEN_CACHE.put(device)
    return device


def _touch(device: Device) -> bool:
    """Write `last_seen_at` if the one known is older than LAST_SEEN_RESOLUTION; whether
    it wrote."""
    now = timezone.now()
    if device.last_seen_at is None or now - device.last_seen_at >= LAST_SEEN_RESOLUTION:
        Device.objects.filter(id=device.id).update(last_seen_at=now)
        device.last_seen_at = now
        return True
    return False


class DeviceTokenAuthentication(authentication.TokenAuthentication):
    """`Authorization: Token <token>`: the device whose token hash matches, and its user.

    Read on every request, except a JSON POST to a view that says `token_cache = True`
    (the message POST, whose write re-checks the device): that one takes the device from
    TOKEN_CACHE when it is there, and fills it when not.
    """

    model = Device

    def authenticate(self, request):
        view = request.parser_context.get("view")
        self._cacheable = (getattr(view, "token_cache", False) and request.method == "POST"
                           and request.content_type.startswith("application/json"))
        return super().authenticate(request)

    def authenticate_credentials(self, key: str):
        token_hash = hash_token(key)
        if not getattr(self, "_cacheable", False):
            device = device_lookup(token_hash)
            _touch(device)
            return device.user, device
        device = device_cached(token_hash)
        if device is None:
            device = device_lookup(token_hash)
            _touch(device)
            TOKEN_CACHE.put(device)
        return device.user, device


class BearerTokenAuthentication(DeviceTokenAuthentication):
    """The same token as `Authorization: Bearer <token>`."""

    keyword = "Bearer"
