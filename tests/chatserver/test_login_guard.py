"""The broker's failed-login limit (broker/login_guard.c), on a real Mosquitto started from
the project's config with a short cooldown: a device account that failed too often is
refused for a while, whatever the password; nothing else is."""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest

from accounts.models import Device, hash_token
from chatserver.brokerconf import LoginLimit
from chatserver.broker_access import DeviceAdd, DynsecAccess, UserAdd
from chatserver.mqtt import BrokerConnection
from tests.support.mosquitto import MosquittoBroker, make_workdir
from tests.support.mqtt import MqttProbe
from tests.support.stack import ProcessStack, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "android-client-sim"))
from chat_sim.api import Api  # noqa: E402
from chat_sim.mqtt import Listener  # noqa: E402

# The login guard is a Mosquitto plugin (broker/login_guard.c).
pytestmark = pytest.mark.mosquitto_only

NOT_AUTHORISED = 135  # CONNACK refusal as paho reports it
LIMIT = LoginLimit(failures=5, window=30, cooldown=2)


@pytest.fixture(scope="module")
def guarded():
    """Mosquitto with a short login-guard cooldown (LIMIT), for this module."""
    workdir = make_workdir(prefix="chat-login-guard-")
    guarded = MosquittoBroker(workdir, login_limit=LIMIT)
    guarded.start()
    yield guarded
    guarded.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def admin(guarded):
    conn = BrokerConnection(
        host=guarded.host, port=guarded.port,
        username=guarded.admin_username, password=guarded.admin_password,
        client_id=f"test-admin-{secrets.token_hex(4)}", keepalive=10,
    )
    assert conn.connect(timeout=10)
    yield conn
    conn.close()


_ids = iter(range(1, 10**6))


def devices_of_a_new_user(admin: BrokerConnection, count: int) -> list[dict]:
    """A user's devices at the broker, named and with passwords as the server makes them."""
    user = next(_ids)
    devices = [Device(id=next(_ids), user_id=user, token_hash=hash_token(Device.new_token())) for _ in range(count)]
    ops = [UserAdd(user=user)] + [
        DeviceAdd(user=user, username=d.mqtt_username, password=d.mqtt_password, client_id=d.mqtt_client_id)
        for d in devices
    ]
    pending = admin.control([c for op in ops for c in DynsecAccess.commands(op)])
    assert admin.wait([pending], timeout=5)
    assert [e for c, e in pending.result if e and not DynsecAccess.is_benign(c, e)] == []
    return [{"username": d.mqtt_username, "password": d.mqtt_password, "client_id": d.mqtt_client_id} for d in devices]


def wrong(device: dict) -> dict:
    return device | {"password": secrets.token_hex(32)}


def test_failed_logins_refuse_that_device_for_the_cooldown_and_no_other(guarded, admin):
    # given: a user's phone connected; its tablet and laptop not
    phone, tablet, laptop = devices_of_a_new_user(admin, 3)
    live = MqttProbe(guarded.host, guarded.port)
    probe = MqttProbe(guarded.host, guarded.port)
    try:
        assert live.connect(**phone, clean_session=False) == 0

        # when: the tablet's account fails LIMIT.failures times
        assert [probe.connect(**wrong(tablet)) for _ in range(LIMIT.failures)] == [NOT_AUTHORISED] * LIMIT.failures
        locked_at = time.monotonic()

        # then: the tablet is refused even with its password...
        assert probe.connect(**tablet) == NOT_AUTHORISED
        # ...the user's other devices are not: the live one stays, another one connects
        assert probe.connect(**laptop) == 0
        assert live.connected.is_set() and not live.disconnected.is_set()
        # the broker's log names the account
        assert f"login_guard: {LIMIT.failures} failed logins of {tablet['username']}" in guarded.log_path.read_text()
        # and once the cooldown is over, its password works again (refusals meanwhile do
        # not prolong it)
        while (code := probe.connect(**tablet)) != 0:
            assert code == NOT_AUTHORISED
            assert time.monotonic() - locked_at < LIMIT.cooldown + 2, "still refused long after the cooldown"
            time.sleep(0.2)  # between attempts, as a phone's reconnect back-off would
        assert time.monotonic() - locked_at >= LIMIT.cooldown - 0.1
    finally:
        live.close()
        probe.close()


def test_fewer_failures_than_the_limit_refuse_nothing(guarded, admin):
    # given
    [tablet] = devices_of_a_new_user(admin, 1)
    probe = MqttProbe(guarded.host, guarded.port)
    try:
        # when
        refused = [probe.connect(**wrong(tablet)) for _ in range(LIMIT.failures - 1)]

        # then
        assert refused == [NOT_AUTHORISED] * (LIMIT.failures - 1)
        assert probe.connect(**tablet) == 0
    finally:
        probe.close()


def test_the_servers_own_account_is_never_locked_out(guarded):
    # given: many wrong passwords for the admin account
    probe = MqttProbe(guarded.host, guarded.port)
    try:
        refused = [
            probe.connect(guarded.admin_username, secrets.token_hex(16), f"attacker-{i}")
            for i in range(3 * LIMIT.failures)
        ]
    finally:
        probe.close()

    # then: the relay and the workers can still (re)connect
    assert set(refused) == {NOT_AUTHORISED}
    assert guarded.admin_can_login()


def test_the_session_broker_runs_the_guard_with_the_projects_defaults(mosquitto):
    # The config `make run` renders (the defaults of chatserver/settings.py) loads it too.
    defaults = LoginLimit()
    assert (
        f"login_guard: device-* accounts refused for {defaults.cooldown:.0f} s after "
        f"{defaults.failures} failed logins within {defaults.window:.0f} s"
    ) in mosquitto.log_path.read_text()


def test_logins_with_the_password_but_another_client_id_count_as_failures(guarded, admin):
    # given: someone who has a device's password but not its client id (the binding)
    [tablet] = devices_of_a_new_user(admin, 1)
    probe = MqttProbe(guarded.host, guarded.port)
    try:
        # when
        refused = [probe.connect(**tablet | {"client_id": f"attacker-{i}"}) for i in range(LIMIT.failures)]

        # then: refused, and then the device itself is too, for the cooldown
        assert refused == [NOT_AUTHORISED] * LIMIT.failures
        assert probe.connect(**tablet) == NOT_AUTHORISED
    finally:
        probe.close()


def test_the_simulated_phone_waits_out_a_cooldown_and_stops_only_once_signed_out(guarded, fault_cluster, tmp_path):
    # given: a stack on this broker (and a database of its own: the session's relay would
    # apply its grants to the session's broker), a phone signed up over HTTP, its account
    # then locked by someone else's wrong passwords
    stack = ProcessStack(database_url=fault_cluster.cluster.url(fault_cluster.new_database()), broker=guarded,
                         workdir=tmp_path).start()
    try:
        api = Api(stack.url)
        session = api.signup(f"cool{secrets.token_hex(3)}", "pass word 123")
        api.token = session["token"]
        mqtt = session["mqtt"]
        device = {"username": mqtt["username"], "password": mqtt["password"], "client_id": mqtt["client_id"]}
        probe = MqttProbe(guarded.host, guarded.port)
        try:
            assert [probe.connect(**wrong(device)) for _ in range(LIMIT.failures)] == [NOT_AUTHORISED] * LIMIT.failures
        finally:
            probe.close()
        items = []
        listener = Listener(api, user_id=session["id"], mqtt=mqtt, on_item=items.append)
        listener.refused_retry = 0.5

        # when: it connects during the cooldown
        listener.start()
        try:
            # then: it waits (the API still knows the device), connects once the cooldown
            # is over...
            assert listener.wait_ready(LIMIT.cooldown + 10)
            assert "login_cooldown" in [item.type for item in items]
            assert not listener.refused.is_set()

            # ...and stops for good once the device is signed out (the API says 401)
            api.logout()
            wait_until(listener.refused.is_set, 15, "the phone to give up after its logout")
        finally:
            listener.stop()
    finally:
        stack.stop()
