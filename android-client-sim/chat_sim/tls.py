"""TLS for the simulator's connections: which CA to trust, for the whole process.

`chat-sim --ca FILE` (or CHAT_SIM_CA) names the CA certificate of a server whose
certificate no public CA signed, such as the local CA `make run` makes (the server prints
where: `DATA_DIR/tls/ca.pem`). With it, HTTPS server URLs are verified against it and the
phone's MQTT connection uses the broker's TLS port (`mqtt.tls_port`), verifying the
broker's certificate and name. Without it, https:// uses the system's CAs, and MQTT goes
over TLS only when the server offers no plaintext listener (`mqtt.plaintext` false).
"""

from __future__ import annotations

import ssl

_ca: str | None = None


def configure(ca: str | None) -> None:
    global _ca
    _ca = ca or None


def ca() -> str | None:
    return _ca


def context() -> ssl.SSLContext:
    """A client context verifying the peer's certificate and name (against `--ca` if given)."""
    return ssl.create_default_context(cafile=_ca)


def mqtt_endpoint(mqtt: dict) -> tuple[int, bool]:
    """(port, over TLS) for a phone's MQTT connection, from the session's `mqtt` block."""
    if (_ca or mqtt.get("plaintext") is False) and mqtt.get("tls_port"):
        return int(mqtt["tls_port"]), True
    if mqtt.get("port") is None:
        raise ValueError("the server offers MQTT over TLS only and announces no TLS port")
    return int(mqtt["port"]), False
