"""Rendering the front server's config (chatserver/frontconf.py); nginx itself checks it."""

import subprocess
from pathlib import Path

import pytest

from chatserver import frontconf
from chatserver.tls import local_server_tls


def render(tmp_path, **overrides):
    args = dict(template=frontconf.TEMPLATE, out=tmp_path / "nginx.conf", front_dir=tmp_path, port=8000,
                max_body=26 * 1024 * 1024)
    return frontconf.render(**(args | overrides)).read_text()


def test_plain_or_https_listener_and_nginx_accepts_both(tmp_path):
    tls = local_server_tls(tmp_path / "tls")
    (tmp_path / "tmp").mkdir()  # made by `prepare`, where nginx makes its temp dirs

    plain = render(tmp_path, bind="127.0.0.1")
    check = subprocess.run([*frontconf.command(tmp_path)[:-2], "-t", "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    https = render(tmp_path, tls=(tls.cert, tls.key))
    check_tls = subprocess.run([*frontconf.command(tmp_path)[:-2], "-t", "-c", str(tmp_path / "nginx.conf")],
                               capture_output=True, text=True)

    assert "listen 127.0.0.1:8000;" in plain and "ssl_certificate" not in plain
    assert f"server unix:{tmp_path}/web.sock;" in plain
    assert "client_max_body_size 27262976;" in plain
    assert "listen 8000 ssl http2;" in https and f"ssl_certificate {tls.cert};" in https
    assert "error_page 497" in https and "error_page 497" not in plain
    assert check_tls.returncode == 0, check_tls.stderr
    assert "@" not in "".join(line for line in plain.splitlines() if not line.lstrip().startswith("#"))


def test_the_broker_auth_listener_is_on_loopback_only_and_only_when_asked_for(tmp_path):
    (tmp_path / "tmp").mkdir()

    without = render(tmp_path)
    with_it = render(tmp_path, broker_auth_port=15680)
    check = subprocess.run([*frontconf.command(tmp_path)[:-2], "-t", "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True)

    assert check.returncode == 0, check.stderr
    assert "listen 127.0.0.1:15680;" in with_it and "15680" not in without
    # The public server refuses the paths in both.
    assert "location /broker-auth/ {\n            return 404" in without
    assert with_it.count("location /broker-auth/ {") == 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"broker_auth_port": 0}, "broker_auth_port must be a port number"),
    ({"broker_auth_port": 8000}, "broker_auth_port must be a port number other than port"),
    ({"port": 0}, "port must be a port number"),
    ({"bind": "0.0.0.0; evil"}, "bind must be an address"),
    ({"front_dir": Path("relative")}, "front_dir must be absolute"),
    ({"front_dir": Path("/tmp/a b")}, "must not contain whitespace"),
    ({"front_dir": Path("/tmp/" + "d" * 100)}, "longer than a Unix socket path may be"),
    ({"forwarded_proto": "$http_x_evil"}, "forwarded_proto must be"),
])
def test_values_that_would_break_or_widen_the_config_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        render(tmp_path, **overrides)
