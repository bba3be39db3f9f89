"""Which address a request counts as, for the rate limits (chatserver/client_address.py)."""

import pytest

from chatserver.client_address import client_address, parse_networks

BALANCERS = parse_networks("10.0.0.0/24, 2001:db8::5")


@pytest.mark.parametrize(("remote", "forwarded", "trusted", "expected"), [
    # A direct client: its connection's address, whatever it says.
    ("203.0.113.7", "", (), "203.0.113.7"),
    ("203.0.113.7", "198.51.100.1", (), "203.0.113.7"),
    ("203.0.113.7", "198.51.100.1", BALANCERS, "203.0.113.7"),
    # Through the project's front server (the Unix socket): the address nginx saw, not
    # what the client wrote before it.
    ("", "203.0.113.7", (), "203.0.113.7"),
    ("", "198.51.100.1, 203.0.113.7", (), "203.0.113.7"),
    ("", "", (), "unix"),
    # Behind a trusted balancer: past it, to the first address not its own.
    ("", "198.51.100.1, 203.0.113.7, 10.0.0.9", BALANCERS, "203.0.113.7"),
    ("10.0.0.9", "203.0.113.7", BALANCERS, "203.0.113.7"),
    ("2001:db8::5", "2001:db8:1::7", BALANCERS, "2001:db8:1::7"),
    # The same balancer untrusted: it is the client.
    ("", "203.0.113.7, 10.0.0.9", (), "10.0.0.9"),
    # Garbage left of what the proxies wrote is never reached; garbage a trusted proxy
    # passed on leaves the last readable address.
    ("", "not an address, 203.0.113.7", (), "203.0.113.7"),
    ("", "not an address, 10.0.0.9", BALANCERS, "10.0.0.9"),
    # An IPv4 client seen over IPv6 counts as itself.
    ("", "::ffff:203.0.113.7", (), "203.0.113.7"),
])
def test_the_client_is_the_last_address_not_a_trusted_proxys(remote, forwarded, trusted, expected):
    meta = {"REMOTE_ADDR": remote, **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})}

    assert client_address(meta, trusted) == expected


def test_trusted_proxies_are_addresses_or_networks_and_anything_else_is_refused():
    assert [str(n) for n in parse_networks(" 10.0.0.5,192.168.0.0/16 ,, ::1")] == [
        "10.0.0.5/32", "192.168.0.0/16", "::1/128"]
    with pytest.raises(ValueError, match="'proxy.example.org' is not an address"):
        parse_networks("10.0.0.5, proxy.example.org")
