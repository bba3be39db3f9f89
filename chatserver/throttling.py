"""DRF throttles on the shared buckets of chatserver/ratelimit.py: one per scope, checked
in the view's `initial()` (after authentication, before the handler writes anything).
A refusal is DRF's `Throttled`: 429 `throttled` with `Retry-After` (the envelope from
chatserver/exception_handler.py).

Rates are DRF's `DEFAULT_THROTTLE_RATES` (`"N/second|minute|hour|day"`, read when the
throttle is made, so tests may change them); a scope's burst is `THROTTLE_BURSTS[scope]`,
or N. Apps subclass `AddressThrottle` or `UserThrottle` with their scope.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from chatserver import backpressure, ratelimit
from chatserver.client_address import client_address


def limit_for(scope: str) -> ratelimit.Limit | None:
    """The scope's limit from the settings (None: not limited)."""
    try:
        rate = api_settings.DEFAULT_THROTTLE_RATES[scope]
    except KeyError:
        raise ImproperlyConfigured(f"no throttle rate for scope {scope!r}") from None
    if rate is None:
        return None
    number, period = SimpleRateThrottle.parse_rate(None, rate)
    return ratelimit.Limit(rate=number, period=period, burst=settings.THROTTLE_BURSTS.get(scope, number))


def address_key(address: str) -> str:
    """An IPv6 client counts by its /64 (one subscriber's share), an IPv4 one by itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class BucketThrottle(SimpleRateThrottle):
    """A scope's bucket, counted only for `methods` (the writes)."""

    methods = frozenset({"POST"})

    def __init__(self) -> None:  # no cache, no history: the limit is a bucket
        self.limit = limit_for(self.scope)
        self.retry_after: float | None = None

    def ident(self, request, view) -> str | None:
        raise NotImplementedError

    def applies(self, request, view) -> bool:
        return request.method in self.methods

    def allow_request(self, request, view) -> bool:
        if self.limit is None or not self.applies(request, view):
            return True
        ident = self.ident(request, view)
        if ident is None:
            return True
        decision = ratelimit.take(self.bucket(ident), self.limit)
        self.retry_after = decision.retry_after
        return decision.allowed

    def bucket(self, ident: str) -> str:
        """The key of `ident`'s bucket in this scope."""
        return f"{self.scope}:{ident}"

    def wait(self) -> float | None:
        return self.retry_after


class AddressThrottle(BucketThrottle):
    """Per client address (`chatserver.client_address`: the connection's, or what the
    front server and the `TRUSTED_PROXIES` say it is)."""

    def ident(self, request, view) -> str | None:
        return address_key(client_address(request.META, settings.TRUSTED_PROXIES))


class UserThrottle(BucketThrottle):
    """Per authenticated user (all of its devices together)."""

    def ident(self, request, view) -> str | None:
        user = request.user
        return str(user.pk) if user is not None and user.is_authenticated else None


class DeliveryBackpressure(BaseThrottle):
    """Refuses writes with 503 `overloaded` while delivery is behind
    (`chatserver.backpressure`); first in a view's `throttle_classes`, so a refused request
    takes nothing from the caller's rate-limit buckets."""

    def allow_request(self, request, view) -> bool:
        if request.method in ("POST", "PUT", "PATCH"):
            backpressure.check()
        return True
