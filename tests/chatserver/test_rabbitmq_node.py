"""RabbitMQ nodes from the project's own config (broker/rabbitmq.conf, chatserver/rabbitconf.py):
real nodes, real paho clients, whichever broker the rest of the suite runs on.

What the product relies on here: the rendered config boots; the server's own account logs
in over MQTT 3.1.1 and drives the management API; nobody else gets in without Django (no
anonymous login, no default `guest`); three nodes form one cluster; and a persistent
QoS 1 session outlives the node it was made on (quorum session queues).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from chatserver import rabbitconf
from tests.support.mosquitto import connack
from tests.support.mqtt import MqttProbe
from tests.support.stack import ROOT

TEMPLATE_ARGS = dict(
    mqtt_port=1883, ws_port=9001, ports=rabbitconf.NodePorts(),
    auth_url="http://127.0.0.1:15680/broker-auth/s3cret", auth_cache_ttl=2.0,
)


def lines(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


# --- the rendered files ----------------------------------------------------------------------


def test_the_config_has_the_shared_contract_settings(tmp_path):
    # when
    conf = rabbitconf.render(template=rabbitconf.TEMPLATE, out=tmp_path / "rabbitmq.conf",
                             node_dir=tmp_path, bind="127.0.0.1", **TEMPLATE_ARGS)

    # then
    assert {
        "mqtt.listeners.tcp.default = 127.0.0.1:1883",
        "web_mqtt.tcp.port = 9001",
        "web_mqtt.tcp.ip = 127.0.0.1",
        "listeners.tcp.default = 127.0.0.1:5672",
        "management.tcp.port = 15672",
        "management.tcp.ip = 127.0.0.1",
        "mqtt.allow_anonymous = false",
        "mqtt.durable_queue_type = quorum",
        "mqtt.vhost = /",
        "mqtt.exchange = amq.topic",
        "mqtt.subscription_ttl = 604800000",
        "auth_backends.1 = internal",
        "auth_backends.2.authn = http",
        "auth_backends.2.authz = cache",
        "auth_cache.cached_backend = http",
        "auth_cache.cache_ttl = 2000",
        "auth_http.http_method = post",
        "auth_http.user_path = http://127.0.0.1:15680/broker-auth/s3cret/user",
        "auth_http.vhost_path = http://127.0.0.1:15680/broker-auth/s3cret/vhost",
        "auth_http.resource_path = http://127.0.0.1:15680/broker-auth/s3cret/resource",
        "auth_http.topic_path = http://127.0.0.1:15680/broker-auth/s3cret/topic",
        f"load_definitions = {tmp_path}/definitions.json",
    } <= lines(conf)
    # Neither TLS, nor a cluster, nor "no plaintext" unless asked for.
    assert not any(line.startswith(("mqtt.listeners.ssl", "web_mqtt.ssl", "cluster_formation", "mqtt.listeners.tcp ="))
                   for line in lines(conf))


def test_tls_listeners_use_the_copied_certificate_and_plaintext_can_be_off(tmp_path):
    # when
    conf = rabbitconf.render(template=rabbitconf.TEMPLATE, out=tmp_path / "rabbitmq.conf", node_dir=tmp_path,
                             tls_ports=(8883, 9443), plaintext=False, **TEMPLATE_ARGS)

    # then
    assert {
        "mqtt.listeners.ssl.default = 8883",
        f"ssl_options.certfile = {tmp_path}/tls-cert.pem",
        f"ssl_options.keyfile = {tmp_path}/tls-key.pem",
        "web_mqtt.ssl.port = 9443",
        f"web_mqtt.ssl.certfile = {tmp_path}/tls-cert.pem",
        "mqtt.listeners.tcp = none",
        "web_mqtt.tcp.listener = none",
    } <= lines(conf)
    assert not any(line.startswith(("mqtt.listeners.tcp.default", "web_mqtt.tcp.port")) for line in lines(conf))


def test_a_cluster_node_lists_every_node_of_the_cluster(tmp_path):
    # when
    conf = rabbitconf.render(template=rabbitconf.TEMPLATE, out=tmp_path / "rabbitmq.conf", node_dir=tmp_path,
                             cluster_nodes=("chat@a", "chat@b", "chat@c"), **TEMPLATE_ARGS)

    # then
    assert {
        "cluster_formation.peer_discovery_backend = classic_config",
        "cluster_formation.classic_config.nodes.1 = chat@a",
        "cluster_formation.classic_config.nodes.2 = chat@b",
        "cluster_formation.classic_config.nodes.3 = chat@c",
    } <= lines(conf)


@pytest.mark.parametrize("change, message", [
    ({"ws_port": 1883}, "ports must differ"),
    ({"mqtt_port": 0}, "mqtt_port must be a port number"),
    ({"bind": "0.0.0.0\nloopback_users = none"}, "bind must be an address"),
    ({"auth_url": "http://x/ y"}, "auth_url must be a plain http"),
    ({"cluster_nodes": ("chat@a\nauth_backends.1 = anonymous",)}, "cluster node names"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, change, message):
    # when
    with pytest.raises(ValueError, match=message):
        rabbitconf.render(template=rabbitconf.TEMPLATE, out=tmp_path / "rabbitmq.conf", node_dir=tmp_path,
                          **(TEMPLATE_ARGS | change))

    # then
    assert not (tmp_path / "rabbitmq.conf").exists()


def test_node_files_are_private_and_hold_no_plain_password(tmp_path):
    # given
    password = secrets.token_urlsafe(16)

    # when
    env = rabbitconf.prepare(node_dir=tmp_path / "node", nodename="chat@localhost", admin_username="chat-server",
                             admin_password=password, cookie="c00kie", **TEMPLATE_ARGS)

    # then
    node_dir = tmp_path / "node"
    assert (node_dir.stat().st_mode & 0o777) == 0o700
    for name in ("rabbitmq.conf", "definitions.json", "enabled_plugins", "node.env"):
        assert ((node_dir / name).stat().st_mode & 0o777) == 0o600, name
        assert password not in (node_dir / name).read_text()
    assert (node_dir / ".erlang.cookie").read_text() == "c00kie"
    definitions = json.loads((node_dir / "definitions.json").read_text())
    assert [u["name"] for u in definitions["users"]] == ["chat-server"]
    assert definitions["users"][0]["tags"] == ["administrator"]
    assert env["HOME"] == str(node_dir)
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "+S 1:1" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]


def test_the_password_hash_is_rabbitmqs_salted_sha256():
    # RabbitMQ's own example: salt 908D C60A, password "test12" (docs: passwords.html).
    assert rabbitconf.password_hash("test12", salt=bytes.fromhex("908DC60A")) == \
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"


def manage(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`manage.py <args>` with the shipped settings, `data_dir` and `env` only."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "BROKER", "RABBITMQ_", "DJANGO_"))}
    clean |= {"DJANGO_SETTINGS_MODULE": "chatserver.settings", "ENV_FILE": "", "DATA_DIR": str(data_dir),
              "MQTT_TLS": "off"} | env
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=120)


def test_broker_prepare_renders_the_rabbitmq_node_from_the_settings(tmp_path):
    # when
    result = manage(tmp_path, "broker_prepare", BROKER="rabbitmq", MQTT_PORT="11883", BROKER_AUTH_PORT="16680",
                    BROKER_AUTH_SECRET="s3cret", RABBITMQ_AUTH_CACHE_TTL="0.5")

    # then: the node's directory, nothing of Mosquitto's
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "broker" / "rabbitmq" / "rabbitmq.conf"
    assert result.stdout.strip() == str(conf)
    assert {
        "mqtt.listeners.tcp.default = 11883",
        "auth_cache.cache_ttl = 500",
        "auth_http.user_path = http://127.0.0.1:16680/broker-auth/s3cret/user",
    } <= lines(conf)
    assert not (tmp_path / "broker" / "mosquitto.conf").exists()
    # The cookie is the generated secret, made once.
    cookie = (tmp_path / "secrets" / "rabbitmq-erlang-cookie").read_text().strip()
    assert (conf.parent / ".erlang.cookie").read_text() == cookie


def test_an_unknown_broker_is_refused_by_name(tmp_path):
    # when
    result = manage(tmp_path, "broker_prepare", BROKER="nats")

    # then
    assert result.returncode != 0
    assert "BROKER must be mosquitto or rabbitmq, got 'nats'" in result.stderr
    assert not (tmp_path / "broker").exists()


# --- a real node ---------------------------------------------------------------------------


def test_the_admin_logs_in_over_mqtt_and_drives_the_management_api(rabbitmq):
    # when / then
    assert connack(rabbitmq.host, rabbitmq.port, rabbitmq.admin_username, rabbitmq.admin_password) == 0
    status, body = rabbitmq.management("/api/whoami")
    assert status == 200
    assert json.loads(body)["name"] == rabbitmq.admin_username
    # The only user is the admin: loading definitions at boot kept `guest` from being made.
    status, body = rabbitmq.management("/api/users")
    assert [u["name"] for u in json.loads(body)] == [rabbitmq.admin_username]


def test_mqtt_over_websockets_on_pahos_default_path(rabbitmq):
    # given
    receiver = MqttProbe(rabbitmq.host, rabbitmq.ws_port, transport="websockets", check_events=False)
    topic = f"test/ws/{secrets.token_hex(4)}"

    # when
    assert receiver.connect(rabbitmq.admin_username, rabbitmq.admin_password, f"ws-{secrets.token_hex(4)}",
                            clean_session=True) == 0
    assert receiver.subscribe(topic) == 1
    assert receiver.publish(topic, b"over websockets")

    # then
    assert receiver.wait_for(1)[0].payload == b"over websockets"
    receiver.close()


def test_anonymous_wrong_password_and_unknown_users_are_refused(rabbitmq):
    # when / then: the auth endpoints are not up here (Django is not asked in this test):
    # a user the internal database does not know is refused all the same.
    assert connack(rabbitmq.host, rabbitmq.port, None, None) in (134, 135)
    assert connack(rabbitmq.host, rabbitmq.port, rabbitmq.admin_username, "not the password") in (134, 135)
    assert connack(rabbitmq.host, rabbitmq.port, "device-nobody", "whatever") in (134, 135)
    assert connack(rabbitmq.host, rabbitmq.port, "guest", "guest") in (134, 135)


def test_an_mqtt_5_client_is_turned_away(rabbitmq):
    # RabbitMQ 3.10 speaks MQTT 3.1.1 only: whatever the product needs has a 3.1.1 path.
    probe = MqttProbe(rabbitmq.host, rabbitmq.port, protocol=5, check_events=False)
    with pytest.raises(TimeoutError):
        probe.connect(rabbitmq.admin_username, rabbitmq.admin_password, f"v5-{secrets.token_hex(4)}", timeout=3)
    probe.close()


def test_session_queues_are_quorum_queues_that_expire(rabbitmq):
    # given
    client_id = f"session-{secrets.token_hex(4)}"
    probe = MqttProbe(rabbitmq.host, rabbitmq.port, check_events=False)
    assert probe.connect(rabbitmq.admin_username, rabbitmq.admin_password, client_id) == 0

    # when
    assert probe.subscribe("test/quorum", qos=1) == 1
    probe.close()

    # then
    status, body = rabbitmq.management(f"/api/queues/%2F/mqtt-subscription-{client_id}qos1")
    assert status == 200
    queue = json.loads(body)
    assert queue["type"] == "quorum"
    assert queue["durable"] is True
    assert queue["arguments"]["x-expires"] == rabbitconf.SESSION_TTL * 1000
    assert rabbitmq.management(f"/api/queues/%2F/mqtt-subscription-{client_id}qos1", method="DELETE")[0] == 204


# --- three nodes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_three_nodes_form_one_cluster_with_the_admin_on_each(rabbitmq_cluster):
    # then
    names = sorted(node.nodename for node in rabbitmq_cluster.nodes)
    for node in rabbitmq_cluster.nodes:
        assert rabbitmq_cluster.running_members(node) == names
        assert node.admin_can_login()


@pytest.mark.slow
def test_a_persistent_session_survives_the_loss_of_its_node(rabbitmq_cluster):
    # given: a persistent QoS 1 session made on node A, that received 1..3 live
    a, b, _ = rabbitmq_cluster.nodes
    client_id = f"phone-{secrets.token_hex(4)}"
    topic = f"chat/users/{secrets.randbelow(10**6)}"
    admin = (rabbitmq_cluster.admin_username, rabbitmq_cluster.admin_password)
    phone = MqttProbe(a.host, a.port, check_events=False)
    assert phone.connect(*admin, client_id) == 0
    assert phone.subscribe(topic, qos=1) == 1
    sender_a = MqttProbe(a.host, a.port, check_events=False)
    assert sender_a.connect(*admin, f"sender-{secrets.token_hex(4)}", clean_session=True) == 0
    for n in (1, 2, 3):
        assert sender_a.publish(topic, f"{n}".encode())
    assert [m.payload for m in phone.wait_for(3)] == [b"1", b"2", b"3"]
    # ...then went offline; 4 and 5 were queued while A was still up
    phone.disconnect()
    for n in (4, 5):
        assert sender_a.publish(topic, f"{n}".encode())
    sender_a.close()
    phone.clear()

    # when: node A goes away, 6..10 are published (and acknowledged) on B
    a.stop()
    try:
        sender_b = MqttProbe(b.host, b.port, check_events=False)
        assert sender_b.connect(*admin, f"sender-{secrets.token_hex(4)}", clean_session=True) == 0
        for n in range(6, 11):
            assert sender_b.publish(topic, f"{n}".encode(), timeout=10)
        sender_b.close()
        phone = MqttProbe(b.host, b.port, check_events=False)
        assert phone.connect(*admin, client_id) == 0

        # then: the session is there on B, with every message, in order, once
        assert phone.session_present is True
        assert [m.payload for m in phone.wait_for(7, timeout=15)] == [f"{n}".encode() for n in range(4, 11)]
        phone.expect_nothing(0.5)
        phone.close()
    finally:
        a.start()
        rabbitmq_cluster.wait_joined()
