"""TLS: the local CA, the broker's TLS listeners, and a stack without plaintext at all."""

from __future__ import annotations

import shutil
import ssl
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from chatserver import brokerconf
from chatserver.tls import local_server_tls
from tests.support.faults import signup
from tests.support.mqtt import MqttProbe
from tests.support.stack import ProcessStack, call, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "android-client-sim"))
from chat_sim import tls as sim_tls  # noqa: E402
from chat_sim.api import Api  # noqa: E402
from chat_sim.mqtt import Listener  # noqa: E402

# --- the local CA (no broker) ---------------------------------------------------------------


def test_the_local_ca_signs_a_certificate_for_this_machine_once(tmp_path):
    # when
    first = local_server_tls(tmp_path / "tls")
    again = local_server_tls(tmp_path / "tls")

    # then: made once; the certificate names loopback and verifies against the CA
    assert again == first
    assert first.cert.read_bytes() == again.cert.read_bytes()
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(first.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(first.ca.read_bytes()))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}


def test_a_new_public_name_gets_a_new_certificate_from_the_same_ca(tmp_path):
    first = local_server_tls(tmp_path / "tls")
    ca = first.ca.read_bytes()

    later = local_server_tls(tmp_path / "tls", extra_names=["chat.example.org"])

    assert later.ca.read_bytes() == ca  # phones that trust it go on trusting the server
    san = x509.load_pem_x509_certificate(later.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "chat.example.org" in san.get_values_for_type(x509.DNSName)


@pytest.mark.mosquitto_only
def test_the_config_keeps_or_drops_the_listener_blocks(tmp_path):
    plugin = tmp_path / "plugin.so"

    both = brokerconf.render(template=brokerconf.TEMPLATE, out=tmp_path / "a.conf", mqtt_port=1883, ws_port=9001,
                             broker_dir=tmp_path, plugin=plugin, tls_ports=(8883, 9443)).read_text()
    only_tls = brokerconf.render(template=brokerconf.TEMPLATE, out=tmp_path / "b.conf", mqtt_port=1883,
                                 ws_port=9001, broker_dir=tmp_path, plugin=plugin, tls_ports=(8883, 9443),
                                 plaintext=False).read_text()

    listeners = lambda text: [line for line in text.splitlines() if line.startswith("listener ")]  # noqa: E731
    assert listeners(both) == ["listener 1883", "listener 9001", "listener 8883", "listener 9443"]
    assert listeners(only_tls) == ["listener 8883", "listener 9443"]
    assert f"certfile {tmp_path}/tls-cert.pem" in only_tls
    assert not [line for line in only_tls.splitlines() if line.startswith(("#>>>", "#<<<"))]
    with pytest.raises(ValueError):
        brokerconf.render(template=brokerconf.TEMPLATE, out=tmp_path / "c.conf", mqtt_port=1883, ws_port=9001,
                          broker_dir=tmp_path, plugin=plugin, plaintext=False)


# --- a broker with TLS listeners ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory, new_broker):
    tls = local_server_tls(tmp_path_factory.mktemp("tls"))
    broker, workdir = new_broker("chat-tls-", tls=tls, plaintext=False)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def tls_login(broker, *, ca: Path, transport: str = "tcp") -> int | str:
    """Log in as the admin over TLS; the CONNACK code, or the TLS error's text."""
    connected, code = threading.Event(), []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-probe-{id(ca)}", transport=transport)
    client.username_pw_set(broker.admin_username, broker.admin_password)
    client.tls_set(ca_certs=str(ca))
    client.on_connect = lambda c, u, f, reason, p: (code.append(reason.value), connected.set())
    try:
        client.connect(broker.host, broker.tls_port if transport == "tcp" else broker.wss_port, keepalive=10)
    except ssl.SSLError as exc:
        return exc.reason or str(exc)
    client.loop_start()
    try:
        connected.wait(5)
        return code[0] if code else "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()


def test_mqtt_and_websockets_over_tls_verify_the_broker(tls_broker):
    assert tls_login(tls_broker, ca=tls_broker.tls.ca) == 0
    assert tls_login(tls_broker, ca=tls_broker.tls.ca, transport="websockets") == 0


def test_a_client_that_trusts_another_ca_refuses_the_broker(tls_broker, tmp_path):
    stranger = local_server_tls(tmp_path / "another").ca

    assert tls_login(tls_broker, ca=stranger) == "CERTIFICATE_VERIFY_FAILED"


def test_without_plaintext_nothing_listens_in_clear(tls_broker):
    probe = MqttProbe(tls_broker.host, tls_broker.port)
    with pytest.raises((OSError, TimeoutError)):
        probe.connect(tls_broker.admin_username, tls_broker.admin_password, "clear-probe", timeout=2)
    probe.close()


# --- a whole stack without plaintext --------------------------------------------------------------


@pytest.fixture
def tls_stack(fault_cluster, tls_broker, tmp_path):
    """granian and the relay on a broker that offers TLS only: the relay connects over TLS."""
    stack = ProcessStack(database_url=fault_cluster.cluster.url(fault_cluster.new_database()),
                         broker=tls_broker, workdir=tmp_path).start()
    yield stack
    stack.stop()


@pytest.mark.slow
def test_a_phone_signs_up_and_receives_over_tls_only(tls_stack, tls_broker):
    # given: the server's own relay reached the broker over TLS (the stack is healthy)
    alice, bob = signup(tls_stack.url, "alice-tls"), signup(tls_stack.url, "bob-tls")

    # then: the session says so, and a phone trusting the CA gets its messages over TLS
    assert (alice.mqtt["plaintext"], alice.mqtt["port"], alice.mqtt["ws_port"]) == (False, None, None)
    assert (alice.mqtt["tls_port"], alice.mqtt["wss_port"]) == (tls_broker.tls_port, tls_broker.wss_port)
    items = []
    sim_tls.configure(str(tls_broker.tls.ca))
    try:
        listener = Listener(Api(tls_stack.url, bob.token), user_id=bob.id, mqtt=bob.mqtt, on_item=items.append)
        listener.start()
        assert listener.wait_ready(10), items
        status, chat = call(f"{tls_stack.url}/chats/", "POST", {"members": [bob.id]}, alice.token)
        assert status == 201
        status, sent = call(f"{tls_stack.url}/chats/{chat['id']}/messages/", "POST", {"content": "over tls"},
                            alice.token)
        assert status == 201
        wait_until(lambda: any(i.kind == "message" and i.data["id"] == sent["id"] for i in items), 10,
                   "the message over TLS")
        listener.stop()
    finally:
        sim_tls.configure(None)
