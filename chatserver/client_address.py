"""The address a request came from, for the rate limits: the connection's, or what a
proxy we trust says it is.

`X-Forwarded-For` is a list any client can start: each proxy appends the address it got
the request from. So the list is read from the right, past the proxies we trust, and the
first address that is not one of theirs is the client's; whatever stands left of it is
the client's own say and is ignored.

Trusted are the proxies named in `TRUSTED_PROXIES` (addresses or networks, empty by
default) and the project's own front server: granian listens only on a Unix socket that
nginx reaches (`front/nginx.conf`), and a request that arrived there (REMOTE_ADDR empty)
came through it. With TRUSTED_PROXIES empty, then, a phone's address is the one nginx
saw, whatever header it sent; behind a load balancer, name the balancer's addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What REMOTE_ADDR is for a connection on a Unix socket (granian, Django's test client
# aside): the front server's.
FRONT_SERVER = ""


def parse_networks(value: str) -> tuple[Network, ...]:
    """`"10.0.0.5, 192.168.0.0/16, ::1"` as networks; ValueError naming a bad entry."""
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES: {item!r} is not an address or a network") from None
    return tuple(networks)


def client_address(meta: Mapping[str, str], trusted: Iterable[Network]) -> str:
    """The client's address for a request's WSGI environ (`request.META`)."""
    trusted = tuple(trusted)
    peer = meta.get("REMOTE_ADDR", "")
    if peer != FRONT_SERVER and not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    address = peer or "unix"
    for hop in reversed(hops):
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            # Garbage a trusted proxy passed on: the last address we could read stands.
            return address
        address = str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)
        if not _is_trusted(address, trusted):
            return address
    return address


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    if not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in trusted)
