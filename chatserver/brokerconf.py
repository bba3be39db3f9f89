"""Prepare Mosquitto's files: render `broker/mosquitto.conf`, create the dynamic-security JSON.

No Django imports: the test suite and `manage.py broker_prepare` both use it.

Layout of a broker directory (`DATA_DIR/broker/` under `make run`):

    mosquitto.conf           rendered from the repository's template
    dynamic-security.json    clients, groups, roles, ACLs (password hashes: mode 0600)
    mosquitto.db             persistence (written by the broker)
    mosquitto.log            the broker's log
    login_guard.so           the failed-login limit, built here from broker/login_guard.c
    tls-cert.pem, tls-key.pem  copies of the TLS certificate and key (when TLS is on)

When run as root, Mosquitto drops to the `mosquitto` user, so the directory and its files
are handed to that user (and every parent directory must let it through).

The dynamic-security JSON is created once, with the admin account the relay uses. Changing
the admin password of an existing file is not done here: a later `prepare()` with another
password leaves the file alone and the relay's login then fails. Change it through the
broker (`setClientPassword`) or delete the file (every device account goes with it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from chatserver.broker_access import DynsecAccess
from chatserver.tls import ServerTls

REPO_DIR = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_DIR / "broker" / "mosquitto.conf"
LOGIN_GUARD_SOURCE = REPO_DIR / "broker" / "login_guard.c"

CONF_NAME = "mosquitto.conf"
DYNSEC_NAME = "dynamic-security.json"
LOG_NAME = "mosquitto.log"
LOGIN_GUARD_NAME = "login_guard.so"
TLS_CERT_NAME = "tls-cert.pem"
TLS_KEY_NAME = "tls-key.pem"
BROKER_USER = "mosquitto"

# Where Debian (any architecture) and source builds put the plugin.
PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/*/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)

# A bind address is one token: a config value with spaces or newlines could inject options.
BIND_RE = re.compile(r"^[A-Za-z0-9.:\-\[\]]*$")

# What building the login guard needs (Debian packages): a C compiler, the C library's
# headers, the broker's plugin headers and libmosquitto's (which they include).
BUILD_PACKAGES = "gcc libc6-dev mosquitto-dev libmosquitto-dev"


@dataclasses.dataclass(frozen=True)
class LoginLimit:
    """The broker's failed-login limit (broker/login_guard.c): after `failures` refused
    logins of one device account within `window` seconds, that account is refused for
    `cooldown` seconds, whatever the password."""

    failures: int = 10
    window: float = 60.0
    cooldown: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            raise ValueError(f"failures must be a positive integer, got {self.failures!r}")
        for name in ("window", "cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
                raise ValueError(f"{name} must be a number of seconds in (0, 86400], got {value!r}")


def find_dynsec_plugin() -> Path:
    """The dynamic-security plugin installed on this machine (FileNotFoundError if none)."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    raise FileNotFoundError(
        "mosquitto_dynamic_security.so not found (Debian: apt-get install mosquitto)"
    )


def render(
    *,
    template: Path,
    out: Path,
    mqtt_port: int,
    ws_port: int,
    broker_dir: Path,
    bind: str = "",
    plugin: Path | None = None,
    tls_ports: tuple[int, int] | None = None,
    plaintext: bool = True,
    login_limit: LoginLimit = LoginLimit(),
) -> Path:
    """Write `template` to `out` with its @PLACEHOLDERS@ replaced; return `out`.

    `tls_ports` (MQTT over TLS, WebSockets over TLS) keeps the template's `tls` block
    (the certificate and key must be in `broker_dir`, see `prepare`); `plaintext` False
    leaves its `plaintext` block out. `broker_dir` must be absolute (Mosquitto resolves
    relative paths against its own working directory). The file is written whole, then
    renamed into place.
    """
    check_listeners({"mqtt_port": mqtt_port, "ws_port": ws_port}, tls_ports=tls_ports, plaintext=plaintext,
                    bind=bind)
    broker_dir = checked_dir(broker_dir, "broker_dir")

    values = {
        "@MQTT_PORT@": str(mqtt_port),
        "@MQTT_WS_PORT@": str(ws_port),
        "@MQTT_TLS_PORT@": str(tls_ports[0]) if tls_ports else "",
        "@MQTT_WSS_PORT@": str(tls_ports[1]) if tls_ports else "",
        "@MQTT_BIND@": bind,
        "@BROKER_DIR@": str(broker_dir),
        "@DYNSEC_PLUGIN@": str(plugin or find_dynsec_plugin()),
        "@LOGIN_FAILURES@": str(login_limit.failures),
        "@LOGIN_WINDOW@": f"{login_limit.window:g}",
        "@LOGIN_COOLDOWN@": f"{login_limit.cooldown:g}",
    }
    return write_rendered(
        template=template, out=out, values=values, keep={"plaintext": plaintext, "tls": tls_ports is not None}
    )


def check_listeners(ports: dict[str, int], *, tls_ports: tuple[int, int] | None, plaintext: bool,
                    bind: str) -> dict[str, int]:
    """A broker's listener settings, checked (ValueError naming the bad one): `ports` by
    name, with `tls_ports` (MQTT over TLS, WebSockets over TLS) added as tls_port and
    wss_port; all distinct port numbers; TLS listeners when there are no plaintext ones;
    `bind` an address or empty. Returns every port by name."""
    ports = dict(ports)
    if tls_ports is not None:
        ports |= {"tls_port": tls_ports[0], "wss_port": tls_ports[1]}
    elif not plaintext:
        raise ValueError("without plaintext listeners the broker needs TLS ones (tls_ports)")
    for name, port in ports.items():
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"{name} must be a port number, got {port!r}")
    if len(set(ports.values())) != len(ports):
        raise ValueError(f"the broker's ports must differ, got {ports}")
    if not BIND_RE.match(bind):
        raise ValueError(f"bind must be an address or empty, got {bind!r}")
    return ports


def checked_dir(path: Path | str, name: str) -> Path:
    """`path` as a Path, if absolute and without whitespace (brokers resolve relative paths
    against their own working directory, and their config files split on spaces)."""
    path = Path(path)
    if not path.is_absolute():
        raise ValueError(f"{name} must be absolute, got {path}")
    if any(c.isspace() for c in str(path)):
        raise ValueError(f"{name} must not contain whitespace: {path!r}")
    return path


def write_rendered(*, template: Path, out: Path, values: dict[str, str], keep: dict[str, bool]) -> Path:
    """Write `template` to `out` with its blocks kept or dropped (`keep_blocks`) and its
    @PLACEHOLDERS@ replaced by `values` (ValueError for one left over); the file is
    written whole, mode 0600, then renamed into place. Returns `out`. For the broker's and
    the front server's configs (chatserver/frontconf.py)."""
    text = keep_blocks(Path(template).read_text(), keep=keep)
    for key, value in values.items():
        text = text.replace(key, value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"unknown placeholders in {template}: {sorted(set(left))}")
    # Trailing spaces (an empty value) are harmless to the servers; keep the file tidy anyway.
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"

    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, out)
    return out


def keep_blocks(text: str, *, keep: dict[str, bool]) -> str:
    """`text` with each `#>>> name` ... `#<<< name` block kept (markers dropped) or removed."""
    lines, current = [], None
    for line in text.splitlines():
        marker = re.fullmatch(r"#(>>>|<<<) (\w+)", line.strip())
        if marker:
            kind, name = marker.groups()
            if name not in keep:
                raise ValueError(f"unknown block {name!r} in the template")
            current = name if kind == ">>>" else None
            continue
        if current is None or keep[current]:
            lines.append(line)
    return "\n".join(lines)


def provision(*, broker_dir: Path, admin_username: str, admin_password: str) -> None:
    """Create `broker_dir` and, if absent, its dynamic-security JSON; fix ownership and modes.

    The JSON is made by `mosquitto_ctrl dynsec init` (the password on the command line, so
    it never prompts), then seeded with what must hold before the relay's first connection:
    the default ACL access (deny) and the admin's right to publish events. Idempotent; safe
    if several processes run it at once (the file is linked into place, never overwritten).
    """
    if not admin_username or not admin_password:
        raise ValueError("admin_username and admin_password are required")
    broker_dir = Path(broker_dir)
    broker_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(broker_dir, 0o700)
    owner = _broker_owner()
    if owner is not None:
        check_traversable(broker_dir, user=BROKER_USER)

    dynsec = broker_dir / DYNSEC_NAME
    if not dynsec.exists():
        _create_dynsec(dynsec, admin_username, admin_password)
    _hand_over(broker_dir, owner)


def prepare(
    *,
    data_dir: Path,
    mqtt_port: int,
    ws_port: int,
    admin_username: str,
    admin_password: str,
    bind: str = "",
    template: Path = TEMPLATE,
    tls: ServerTls | None = None,
    tls_ports: tuple[int, int] | None = None,
    plaintext: bool = True,
    login_limit: LoginLimit = LoginLimit(),
) -> Path:
    """Provision `data_dir/broker/` (with the login guard built, `build_login_guard`) and
    render its config; return the config's path.

    With `tls` (a certificate chain and its key, anywhere readable by this process, e.g.
    root-only Let's Encrypt files) and `tls_ports`, copies of both are put in the broker
    directory, owned by the broker's user, and the TLS listeners are on. Run it again
    after renewing a certificate, then restart the broker.
    """
    if (tls is None) != (tls_ports is None):
        raise ValueError("tls and tls_ports go together")
    broker_dir = Path(data_dir).resolve() / "broker"
    provision(
        broker_dir=broker_dir, admin_username=admin_username, admin_password=admin_password
    )
    build_login_guard(broker_dir / LOGIN_GUARD_NAME)
    install_tls(broker_dir, tls)
    conf = render(
        template=template,
        out=broker_dir / CONF_NAME,
        mqtt_port=mqtt_port,
        ws_port=ws_port,
        broker_dir=broker_dir,
        bind=bind,
        tls_ports=tls_ports,
        plaintext=plaintext,
        login_limit=login_limit,
    )
    # Mosquitto re-reads its config as the `mosquitto` user on SIGHUP.
    _hand_over(broker_dir, _broker_owner())
    return conf


def install_tls(broker_dir: Path, tls: ServerTls | None) -> None:
    """Copy `tls`'s certificate and key into `broker_dir` (0600, renamed into place), or
    remove old copies when `tls` is None. Copies, because the broker may read them as
    another user than the one who may read the originals (Mosquitto drops to its own);
    RabbitMQ's node (chatserver/rabbitconf.py) uses the same names."""
    if tls is not None:
        for source, name in ((tls.cert, TLS_CERT_NAME), (tls.key, TLS_KEY_NAME)):
            tmp = broker_dir / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, broker_dir / name)
    else:
        for name in (TLS_CERT_NAME, TLS_KEY_NAME):
            (broker_dir / name).unlink(missing_ok=True)


def build_login_guard(out: Path, *, source: Path = LOGIN_GUARD_SOURCE) -> Path:
    """Compile the login guard plugin to `out` unless it is there and newer than its
    source; return `out`. A missing compiler or header fails loudly, naming the Debian
    packages (`BUILD_PACKAGES`): the broker's config loads the plugin, so a broker
    without it would not start. The file is built aside, then renamed into place (safe
    if several processes prepare the same directory). Mosquitto loads plugins after
    dropping to the `mosquitto` user (measured on 2.0.11), so the file being that user's,
    like the rest of the directory, gives it nothing it did not have."""
    out = Path(out)
    if out.exists() and out.stat().st_mtime >= Path(source).stat().st_mtime:
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FileNotFoundError(f"no C compiler to build {out.name} (Debian: apt-get install {BUILD_PACKAGES})")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-fPIC", "-shared", str(source), "-o", str(tmp)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"building {out.name} failed (Debian: apt-get install {BUILD_PACKAGES}):\n{proc.stderr.strip()}"
        )
    os.replace(tmp, out)
    return out


# --- helpers -------------------------------------------------------------------------------


def _create_dynsec(path: Path, admin_username: str, admin_password: str) -> None:
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None:
        raise FileNotFoundError("mosquitto_ctrl not found (Debian: apt-get install mosquitto)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # `init` refuses an existing file and prompts when the password is missing; stdin is
    # closed so a prompt fails instead of hanging. Its exit status is 0 even when it
    # refuses, hence the check on the file.
    proc = subprocess.run(
        [ctrl, "dynsec", "init", str(tmp), admin_username, admin_password],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"mosquitto_ctrl dynsec init failed ({proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    try:
        config = json.loads(tmp.read_text())
        DynsecAccess.seed_config(config)
        tmp.write_text(json.dumps(config, indent="\t"))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # fails if another process got there first: keep theirs
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _broker_owner() -> tuple[int, int] | None:
    """(uid, gid) the broker runs as when it drops privileges, or None if it does not."""
    if os.geteuid() != 0:
        return None  # Mosquitto started by a normal user runs as that user.
    try:
        entry = pwd.getpwnam(BROKER_USER)
    except KeyError:
        return None  # No such user: Mosquitto stays root (and warns).
    return entry.pw_uid, entry.pw_gid


def _hand_over(broker_dir: Path, owner: tuple[int, int] | None) -> None:
    """Give the directory and its files to the broker's user, private to it."""
    os.chmod(broker_dir, 0o700)
    for path in [broker_dir, *broker_dir.iterdir()]:
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o600)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)


def check_traversable(path: Path, *, user: str) -> None:
    """Fail clearly if `user` (a server's unprivileged user) cannot reach `path` (the
    server would fail obscurely)."""
    entry = pwd.getpwnam(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    groups = set(os.getgrouplist(user, gid))
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise PermissionError(
                f"the {user} user cannot enter {parent} (mode {st.st_mode & 0o777:o}); "
                f"choose a DATA_DIR it can reach, or allow it: chmod o+x {parent}"
            )
