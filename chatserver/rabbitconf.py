"""Prepare a RabbitMQ node's files (BROKER=rabbitmq): render `broker/rabbitmq.conf`, write
the admin's definitions, the plugin list and the node's environment.

No Django imports: the test suite (tests/support/rabbitmq.py), `manage.py broker_prepare`
and scripts/rabbitmq-cluster.sh all use it. Mosquitto's twin is chatserver/brokerconf.py.

Layout of a node directory (`DATA_DIR/broker/rabbitmq/` under `make run`):

    rabbitmq.conf       rendered from the repository's template
    enabled_plugins     a copy of broker/enabled_plugins
    definitions.json    the admin user (its password's hash) and its permissions, loaded
                        at every boot (mode 0600)
    node.env            the node's environment, `export NAME=value` lines for a shell
                        (scripts/broker.sh sources it before starting the node)
    .erlang.cookie      the Erlang distribution's shared secret (the node's HOME is here)
    tls-cert.pem, tls-key.pem  copies of the TLS certificate and key (when TLS is on)
    mnesia/             the node's database, quorum queue logs (RabbitMQ writes them)
    log/                the node's log, <nodename>.log

The node runs as the user who starts it (never switching to a `rabbitmq` user, as
Debian's wrapper in /usr/sbin does): everything is that user's, under DATA_DIR.

The admin user is created from definitions rather than with `rabbitmqctl add_user` after
boot: definitions are loaded by the node itself before its listeners open, so there is no
moment where MQTT accepts connections and the relay's login fails, no extra Erlang VM
(each `rabbitmqctl` call boots one, about a second), and a changed MQTT_ADMIN_PASSWORD
takes effect at the next boot (Mosquitto's dynamic-security file keeps the first one).
A node that loads definitions at boot does not create RabbitMQ's default `guest` user.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
from pathlib import Path

from chatserver.brokerconf import check_listeners, checked_dir, install_tls, write_rendered
from chatserver.tls import ServerTls

REPO_DIR = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_DIR / "broker" / "rabbitmq.conf"
PLUGINS_TEMPLATE = REPO_DIR / "broker" / "enabled_plugins"

# Debian's package; the script starts the node in the foreground as the current user.
SERVER_BIN = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL_BIN = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")

CONF_NAME = "rabbitmq.conf"
PLUGINS_NAME = "enabled_plugins"
DEFINITIONS_NAME = "definitions.json"
ENV_NAME = "node.env"
COOKIE_NAME = ".erlang.cookie"

# A phone's unused session queue lives this long (Mosquitto: persistent_client_expiration 7d).
SESSION_TTL = 7 * 86400

# Low idle CPU on a small machine: one scheduler, and schedulers that do not spin while
# waiting for work (busy-waiting is most of an idle node's CPU on 2 cores). A host that
# runs only RabbitMQ under real load should drop `+S 1:1` (RABBITMQ_ERL_ARGS).
DEFAULT_ERL_ARGS = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"

# Erlang short node names: name@host.
NODENAME_RE = re.compile(r"^[A-Za-z0-9_\-]+@[A-Za-z0-9_\-.]+$")
# The auth URL is rendered into the config unquoted: a plain http(s) URL, no spaces.
AUTH_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9_\-./~%]*)?$")


@dataclasses.dataclass(frozen=True)
class NodePorts:
    """A node's ports besides the MQTT ones: AMQP (loopback), the management API
    (loopback), Erlang distribution, and the epmd every node of the machine registers with."""

    amqp: int = 5672
    management: int = 15672
    dist: int = 25672
    epmd: int = 4369


def auth_url(*, port: int, secret: str) -> str:
    """Where the node asks Django about logins and checks: the front server's loopback
    listener (`BROKER_AUTH_PORT`, front/nginx.conf), under the secret path that
    chatserver/urls.py serves (`broker-auth/<secret>/<kind>`)."""
    return f"http://127.0.0.1:{port}/broker-auth/{secret}"


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """The hash RabbitMQ's internal backend stores (rabbit_password_hashing_sha256, its
    default): base64(salt + sha256(salt + password)), a 4-byte random salt."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(*, admin_username: str, admin_password: str) -> dict:
    """What the node loads at boot: vhost /, the admin user (administrator: it drives the
    management API) with every permission on it. Topic permissions are left out: the
    internal backend allows every topic to a user with none."""
    return {
        "users": [{
            "name": admin_username,
            "password_hash": password_hash(admin_password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": ["administrator"],
        }],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": admin_username, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
    }


def is_local(nodename: str) -> bool:
    """Whether the node's host is this machine's loopback name (then epmd and the Erlang
    distribution listen on 127.0.0.1 only)."""
    return nodename.split("@", 1)[1] == "localhost"


def node_env(
    *, node_dir: Path, nodename: str, ports: NodePorts, erl_args: str = DEFAULT_ERL_ARGS
) -> dict[str, str]:
    """The environment `rabbitmq-server` and `rabbitmqctl` need for this node.

    Every file of the node is named, so nothing of /etc/rabbitmq (Debian's rabbitmq-env.conf,
    a system-wide config) is read. HOME is the node directory: the Erlang cookie is there.
    A node named ...@localhost keeps epmd and the distribution port on loopback.
    """
    node_dir = Path(node_dir)
    args = erl_args
    env = {
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_CONFIG_FILE": str(node_dir / CONF_NAME),
        # Absent files: only what is named here is read.
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(node_dir / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(node_dir / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(node_dir / PLUGINS_NAME),
        "RABBITMQ_MNESIA_BASE": str(node_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(node_dir / "log"),
        "RABBITMQ_DIST_PORT": str(ports.dist),
        "ERL_EPMD_PORT": str(ports.epmd),
        "HOME": str(node_dir),
    }
    if is_local(nodename):
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        args += " -kernel inet_dist_use_interface {127,0,0,1}"
    env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = args.strip()
    return env


def render(
    *,
    template: Path,
    out: Path,
    node_dir: Path,
    mqtt_port: int,
    ws_port: int,
    ports: NodePorts,
    auth_url: str,
    auth_cache_ttl: float,
    bind: str = "",
    tls_ports: tuple[int, int] | None = None,
    plaintext: bool = True,
    cluster_nodes: tuple[str, ...] = (),
    session_ttl: int = SESSION_TTL,
) -> Path:
    """Write `template` to `out` with its @PLACEHOLDERS@ replaced; return `out`.

    `tls_ports` keeps the `tls` block (the certificate and key must be in `node_dir`, see
    `prepare`); `plaintext` False leaves the plaintext listeners out; `cluster_nodes`
    (every node of the cluster, this one included) keeps the `cluster` block, so that a
    fresh node joins the others by itself at its first boot.
    """
    check_listeners(
        {"mqtt_port": mqtt_port, "ws_port": ws_port, "amqp_port": ports.amqp, "management_port": ports.management,
         "dist_port": ports.dist, "epmd_port": ports.epmd},
        tls_ports=tls_ports, plaintext=plaintext, bind=bind,
    )
    node_dir = checked_dir(node_dir, "node_dir")
    if not AUTH_URL_RE.match(auth_url):
        raise ValueError(f"auth_url must be a plain http(s) URL, got {auth_url!r}")
    if not 0 <= auth_cache_ttl <= 3600:
        raise ValueError(f"auth_cache_ttl must be seconds in [0, 3600], got {auth_cache_ttl!r}")
    for node in cluster_nodes:
        if not NODENAME_RE.match(node):
            raise ValueError(f"cluster node names are name@host, got {node!r}")

    def listener(port: int) -> str:
        # RabbitMQ takes "ip:port" (IPv6 too: the last colon separates) or a port alone.
        return f"{bind}:{port}" if bind else str(port)

    values = {
        "@MQTT_LISTENER@": listener(mqtt_port),
        "@MQTT_WS_PORT@": str(ws_port),
        "@MQTT_TLS_LISTENER@": listener(tls_ports[0]) if tls_ports else "",
        "@MQTT_WSS_PORT@": str(tls_ports[1]) if tls_ports else "",
        "@MQTT_BIND@": bind,
        "@AMQP_PORT@": str(ports.amqp),
        "@MANAGEMENT_PORT@": str(ports.management),
        "@NODE_DIR@": str(node_dir),
        "@AUTH_URL@": auth_url.rstrip("/"),
        "@AUTH_CACHE_TTL_MS@": str(round(auth_cache_ttl * 1000)),
        "@SESSION_TTL_MS@": str(session_ttl * 1000),
        "@CLUSTER_NODES@": "\n".join(
            f"cluster_formation.classic_config.nodes.{i} = {node}" for i, node in enumerate(cluster_nodes, 1)
        ),
    }
    keep = {
        "plaintext": plaintext,
        "no_plaintext": not plaintext,
        "bind": plaintext and bool(bind),
        "tls": tls_ports is not None,
        "tls_bind": tls_ports is not None and bool(bind),
        "cluster": bool(cluster_nodes),
    }
    return write_rendered(template=template, out=out, values=values, keep=keep)


def prepare(
    *,
    node_dir: Path,
    nodename: str,
    mqtt_port: int,
    ws_port: int,
    ports: NodePorts,
    admin_username: str,
    admin_password: str,
    auth_url: str,
    auth_cache_ttl: float = 2.0,
    cookie: str,
    bind: str = "",
    tls: ServerTls | None = None,
    tls_ports: tuple[int, int] | None = None,
    plaintext: bool = True,
    cluster_nodes: tuple[str, ...] = (),
    erl_args: str = DEFAULT_ERL_ARGS,
    template: Path = TEMPLATE,
) -> dict[str, str]:
    """Create `node_dir` (0700) with every file of the module docstring's layout but the
    node's own data; return the node's environment (`node_env`, also written to node.env).

    Idempotent: run it again after changing a setting or renewing a certificate, then
    restart the node. Several nodes of one cluster share `cookie` and the admin's
    credentials; each has its own `node_dir`, name and ports.
    """
    if not admin_username or not admin_password:
        raise ValueError("admin_username and admin_password are required")
    if not NODENAME_RE.match(nodename):
        raise ValueError(f"nodename must be name@host, got {nodename!r}")
    if cluster_nodes and nodename not in cluster_nodes:
        raise ValueError(f"{nodename} is not among the cluster's nodes {list(cluster_nodes)}")
    if (tls is None) != (tls_ports is None):
        raise ValueError("tls and tls_ports go together")
    if not cookie or not re.fullmatch(r"[A-Za-z0-9_\-]+", cookie):
        raise ValueError("cookie must be a non-empty word of letters, digits, _ and -")
    node_dir = Path(node_dir).resolve()
    node_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(node_dir, 0o700)

    install_tls(node_dir, tls)
    render(
        template=template, out=node_dir / CONF_NAME, node_dir=node_dir, mqtt_port=mqtt_port,
        ws_port=ws_port, ports=ports, auth_url=auth_url, auth_cache_ttl=auth_cache_ttl, bind=bind,
        tls_ports=tls_ports, plaintext=plaintext, cluster_nodes=cluster_nodes,
    )
    _write(node_dir / PLUGINS_NAME, PLUGINS_TEMPLATE.read_text())
    _write(node_dir / DEFINITIONS_NAME, json.dumps(
        definitions(admin_username=admin_username, admin_password=admin_password), indent=2) + "\n")
    # Erlang refuses a cookie file others can read; it is read as is (no newline).
    _write(node_dir / COOKIE_NAME, cookie, mode=0o400)
    env = node_env(node_dir=node_dir, nodename=nodename, ports=ports, erl_args=erl_args)
    _write(node_dir / ENV_NAME, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    return env


def find_server() -> Path:
    """Debian's rabbitmq-server start script (FileNotFoundError if not installed)."""
    if not os.access(SERVER_BIN, os.X_OK):
        raise FileNotFoundError(
            f"{SERVER_BIN} not found (Debian: apt-get install rabbitmq-server, "
            "or bash scripts/system-deps.sh rabbitmq)"
        )
    return SERVER_BIN


def find_epmd() -> str:
    """Erlang's port mapper daemon (FileNotFoundError if Erlang is not installed)."""
    found = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    if found is None:
        raise FileNotFoundError("epmd not found (Debian: apt-get install erlang-base)")
    return str(found)


def _write(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Write `path` whole, then rename it into place (a node reading it sees old or new)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
