"""Where the server's own processes reach the broker: one address, or every node of a cluster.

`MQTT_HOST` is a comma-separated list of `host[:port]` (an IPv6 literal in brackets,
`[::1]:1883`); an entry without a port takes the port of the listener the server's
processes use (`MQTT_PORT`, or `MQTT_TLS_PORT` with `MQTT_PLAINTEXT=off`). Mosquitto's
single address, `MQTT_HOST=127.0.0.1`, is a list of one and means what it always meant.

Why a list rather than a TCP balancer in front of the cluster: the server's connections
are few and long-lived, any RabbitMQ node serves any client (client ids and sessions are
cluster-wide), so the client can pick the node itself, and the cluster needs no extra
part that could fail on its own. `chatserver.mqtt.BrokerConnection` tries the addresses
in turn: the one it had, again, as long as it keeps connecting, the next one after a
lost connection or a failed attempt.
"""

from __future__ import annotations

Address = tuple[str, int]


def parse_broker_addresses(value: str, *, default_port: int) -> list[Address]:
    """`"mq1, mq2:1884, [::1]:1885"` -> `[("mq1", default_port), ("mq2", 1884), ("::1", 1885)]`.

    ValueError naming the entry for anything else: an empty list or entry, a port that is
    not a number in 1-65535, an unbracketed IPv6 address (which `:port` would make
    ambiguous), a repeated address.
    """
    addresses: list[Address] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"empty broker address in {value!r}")
        if entry.startswith("["):
            host, bracket, rest = entry[1:].partition("]")
            if not bracket or not host or (rest and not rest.startswith(":")):
                raise ValueError(f"broker address {entry!r}: [IPv6 address] or [IPv6 address]:port")
            port_text = rest[1:] if rest else None
        elif entry.count(":") > 1:
            raise ValueError(f"broker address {entry!r}: an IPv6 address goes in brackets, [{entry}]")
        else:
            host, colon, port_text = entry.partition(":")
            port_text = port_text if colon else None
            if not host:
                raise ValueError(f"broker address {entry!r}: no host")
        if any(c.isspace() for c in host):
            raise ValueError(f"broker address {entry!r}: spaces in the host")
        if port_text is None:
            port = default_port
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ValueError(f"broker address {entry!r}: the port must be a number from 1 to 65535")
        if (host, port) in addresses:
            raise ValueError(f"broker address {entry!r} is listed twice")
        addresses.append((host, port))
    return addresses
