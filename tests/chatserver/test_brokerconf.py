"""Preparing the broker's files: rendering the config, creating the dynamic-security JSON."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import stat

import pytest

from chatserver import brokerconf
from tests.support.mosquitto import make_workdir

# Mosquitto's config and dynamic-security file (RabbitMQ's: tests/chatserver/test_rabbitmq_node.py).
pytestmark = pytest.mark.mosquitto_only


@pytest.fixture
def workdir():
    path = make_workdir(prefix="chat-brokerconf-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_render_fills_every_placeholder(workdir):
    # when
    out = brokerconf.render(
        template=brokerconf.TEMPLATE, out=workdir / "m.conf",
        mqtt_port=1883, ws_port=9001, broker_dir=workdir / "broker", bind="127.0.0.1",
    )
    # then
    text = out.read_text()
    assert re.search(r"@[A-Z_]+@", text) is None
    assert "listener 1883 127.0.0.1\nprotocol mqtt\n" in text
    assert "listener 9001 127.0.0.1\nprotocol websockets\n" in text
    assert f"persistence_location {workdir / 'broker'}\n" in text
    assert f"plugin_opt_config_file {workdir / 'broker' / 'dynamic-security.json'}\n" in text
    assert f"plugin {brokerconf.find_dynsec_plugin()}\n" in text
    # the login guard first (it sees each login before dynamic security), with the defaults
    guard = f"plugin {workdir / 'broker' / 'login_guard.so'}\n"
    assert guard + "plugin_opt_failures 10\nplugin_opt_window 60\nplugin_opt_cooldown 60\n" in text
    assert text.index(guard) < text.index(f"plugin {brokerconf.find_dynsec_plugin()}\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_render_with_no_bind_listens_on_every_interface(workdir):
    out = brokerconf.render(
        template=brokerconf.TEMPLATE, out=workdir / "m.conf",
        mqtt_port=1883, ws_port=9001, broker_dir=workdir,
    )
    assert "listener 1883\nprotocol mqtt\n" in out.read_text()


@pytest.mark.parametrize("kwargs", [
    {"bind": "0.0.0.0\nallow_anonymous true"},
    {"bind": "1.2.3.4 5"},
    {"mqtt_port": 0},
    {"ws_port": 70000},
    {"ws_port": 1883},
    {"broker_dir": "relative/dir"},
])
def test_render_refuses_bad_values(workdir, kwargs):
    values = {"mqtt_port": 1883, "ws_port": 9001, "broker_dir": workdir, "bind": ""} | kwargs
    with pytest.raises(ValueError):
        brokerconf.render(template=brokerconf.TEMPLATE, out=workdir / "m.conf", **values)
    assert not (workdir / "m.conf").exists()


@pytest.mark.parametrize("kwargs", [
    {"failures": 0}, {"failures": 2.5}, {"failures": True}, {"window": 0}, {"cooldown": -1}, {"cooldown": 10**6},
])
def test_a_login_limit_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        brokerconf.LoginLimit(**kwargs)


def test_the_login_guard_is_built_once_and_again_when_its_source_changes(workdir):
    # given
    source = workdir / "guard.c"
    shutil.copyfile(brokerconf.LOGIN_GUARD_SOURCE, source)
    out = workdir / "guard.so"
    # when
    brokerconf.build_login_guard(out, source=source)
    built = out.stat().st_mtime_ns
    brokerconf.build_login_guard(out, source=source)
    # then
    assert out.stat().st_mtime_ns == built
    os.utime(source, ns=(built + 10**9, built + 10**9))
    brokerconf.build_login_guard(out, source=source)
    assert out.stat().st_mtime_ns != built
    assert out.read_bytes()[:4] == b"\x7fELF"


def test_provision_creates_the_dynsec_file_once_with_the_admin_and_the_baseline(workdir):
    # given
    broker_dir = workdir / "data" / "broker"
    # when
    brokerconf.provision(broker_dir=broker_dir, admin_username="server", admin_password="pw-1")
    first = (broker_dir / "dynamic-security.json").read_bytes()
    brokerconf.provision(broker_dir=broker_dir, admin_username="server", admin_password="pw-2")
    # then: created once (a later password is not applied: documented)
    assert (broker_dir / "dynamic-security.json").read_bytes() == first
    config = json.loads(first)
    assert [c["username"] for c in config["clients"]] == ["server"]
    assert config["clients"][0]["roles"] == [{"rolename": "admin"}]
    assert config["defaultACLAccess"] == {
        "publishClientSend": False, "publishClientReceive": False,
        "subscribe": False, "unsubscribe": True,
    }
    [admin_role] = config["roles"]
    assert {"acltype": "publishClientSend", "topic": "chat/#", "allow": True} in admin_role["acls"]
    assert "pw-1" not in first.decode()
    assert sorted(p.name for p in broker_dir.iterdir()) == ["dynamic-security.json"]


def test_provision_makes_the_files_private_to_the_broker_user(workdir):
    # when
    broker_dir = workdir / "broker"
    brokerconf.provision(broker_dir=broker_dir, admin_username="server", admin_password="pw")
    # then
    dynsec = broker_dir / "dynamic-security.json"
    assert stat.S_IMODE(broker_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(dynsec.stat().st_mode) == 0o600
    expected_uid = pwd.getpwnam("mosquitto").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert broker_dir.stat().st_uid == expected_uid
    assert dynsec.stat().st_uid == expected_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the files to another user")
def test_provision_refuses_a_directory_the_broker_user_cannot_reach(workdir):
    # given
    closed = workdir / "closed"
    closed.mkdir(mode=0o700)
    # when / then
    with pytest.raises(PermissionError, match="cannot enter"):
        brokerconf.provision(broker_dir=closed / "broker", admin_username="a", admin_password="b")


def test_prepare_returns_the_rendered_config_in_data_dir_broker(workdir):
    # when
    conf = brokerconf.prepare(
        data_dir=workdir, mqtt_port=11883, ws_port=19001,
        admin_username="server", admin_password=secrets.token_urlsafe(8),
    )
    # then
    assert conf == workdir.resolve() / "broker" / "mosquitto.conf"
    assert sorted(p.name for p in conf.parent.iterdir()) == ["dynamic-security.json", "login_guard.so", "mosquitto.conf"]
    assert conf.stat().st_uid == (pwd.getpwnam("mosquitto").pw_uid if os.geteuid() == 0 else os.geteuid())


def test_the_session_broker_started_without_warnings(mosquitto):
    # Every option in broker/mosquitto.conf exists in this Mosquitto: it printed nothing.
    assert mosquitto.output_path.read_text() == ""
    assert "running" in mosquitto.log_path.read_text()
