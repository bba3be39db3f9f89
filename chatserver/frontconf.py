"""Prepare nginx's files: render `front/nginx.conf` into a front directory.

No Django imports (like `chatserver.brokerconf`): the test suite, the bench and
`manage.py front_prepare` all use it, so all of them run the front server as it ships.

Layout of a front directory (`DATA_DIR/front/` under `make run`):

    nginx.conf   rendered from the repository's template
    nginx.pid    written by nginx
    web.sock     the web tier's Unix socket (Procfile: `granian --uds ...`), made by granian
    tmp/         request bodies and answers nginx is buffering

Started as root, nginx's workers drop to `www-data` (Debian's nginx user): the directory
is then root's, group `www-data`, mode 0710, so that those workers reach the socket and no
other local user does (a process that could write to the socket could say any client
address it likes: chatserver/client_address.py trusts what comes through it). Started by
another user, everything is that user's, mode 0700.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
from pathlib import Path

from chatserver.brokerconf import BIND_RE, check_traversable, write_rendered

REPO_DIR = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_DIR / "front" / "nginx.conf"

CONF_NAME = "nginx.conf"
SOCKET_NAME = "web.sock"
WORKER_USER = "www-data"
# Around the largest attachment: the multipart envelope and the message's other fields.
BODY_MARGIN = 1024 * 1024
# sun_path is 108 bytes on Linux, its last one the terminating NUL.
MAX_SOCKET_PATH = 107


def find_nginx() -> str:
    """The nginx binary (Debian puts it in /usr/sbin, off a normal user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise FileNotFoundError("nginx not found (Debian: apt-get install nginx)")
    return found


def command(front_dir: Path) -> list[str]:
    """The command line that runs nginx on a prepared front directory, in the foreground."""
    front_dir = Path(front_dir)
    # -e: the error log from the first moment (before the config is read, nginx would
    # otherwise open the compiled-in /var/log/nginx/error.log).
    return [find_nginx(), "-e", "stderr", "-p", f"{front_dir}/", "-c", str(front_dir / CONF_NAME)]


def socket_path(front_dir: Path) -> Path:
    return Path(front_dir) / SOCKET_NAME


def render(
    *,
    template: Path,
    out: Path,
    front_dir: Path,
    port: int,
    bind: str = "",
    max_body: int,
    tls: tuple[Path, Path] | None = None,
    worker_user: str | None = None,
    forwarded_proto: str = "$scheme",
    broker_auth_port: int | None = None,
) -> Path:
    """Write `template` to `out` with its @PLACEHOLDERS@ replaced; return `out`.

    `tls` (certificate chain, key) makes the port speak HTTPS. `forwarded_proto` is what
    Django is told the scheme was: nginx's own, or a TLS proxy's in front of it
    (`$http_x_forwarded_proto`). `broker_auth_port`: also listen on 127.0.0.1 there for
    the broker's auth checks (BROKER=rabbitmq; None: no such listener). The file is
    written whole, then renamed into place.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port must be a port number, got {port!r}")
    if broker_auth_port is not None and (
        not isinstance(broker_auth_port, int) or isinstance(broker_auth_port, bool)
        or not 0 < broker_auth_port < 65536 or broker_auth_port == port
    ):
        raise ValueError(f"broker_auth_port must be a port number other than port, got {broker_auth_port!r}")
    if not BIND_RE.match(bind):
        raise ValueError(f"bind must be an address or empty, got {bind!r}")
    if not isinstance(max_body, int) or max_body <= 0:
        raise ValueError(f"max_body must be a positive number of bytes, got {max_body!r}")
    if forwarded_proto not in ("$scheme", "$http_x_forwarded_proto"):
        raise ValueError(f"forwarded_proto must be $scheme or $http_x_forwarded_proto, got {forwarded_proto!r}")
    front_dir = Path(front_dir)
    if not front_dir.is_absolute():
        raise ValueError(f"front_dir must be absolute, got {front_dir}")
    paths = [str(front_dir), *(str(p) for p in tls or ())]
    if any(c.isspace() or c in ";{}'\"$" for path in paths for c in path):
        raise ValueError(f"paths must not contain whitespace or nginx syntax: {paths!r}")
    sock = socket_path(front_dir)
    if len(str(sock).encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"{sock}: longer than a Unix socket path may be; choose a shorter DATA_DIR")
    if worker_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]*", worker_user):
        raise ValueError(f"worker_user must be a user name, got {worker_user!r}")

    listen = f"{bind}:{port}" if bind else str(port)
    values = {
        "@FRONT_DIR@": str(front_dir),
        "@WEB_SOCKET@": str(sock),
        "@LISTEN@": listen,
        "@MAX_BODY@": str(max_body),
        "@WORKER_USER@": f"user {worker_user};" if worker_user else "",
        "@TLS_CERT@": str(tls[0]) if tls else "",
        "@TLS_KEY@": str(tls[1]) if tls else "",
        "@FORWARDED_PROTO@": forwarded_proto,
        "@BROKER_AUTH_LISTEN@": f"127.0.0.1:{broker_auth_port}" if broker_auth_port else "",
    }
    keep = {"plain": tls is None, "tls": tls is not None, "broker_auth": broker_auth_port is not None}
    return write_rendered(template=template, out=out, values=values, keep=keep)


def prepare(
    *,
    data_dir: Path,
    port: int,
    bind: str = "",
    max_attachment: int,
    tls: tuple[Path, Path] | None = None,
    behind_tls_proxy: bool = False,
    broker_auth_port: int | None = None,
    template: Path = TEMPLATE,
) -> Path:
    """Create `data_dir/front/` with its modes and render the config; return its path."""
    front_dir = Path(data_dir).resolve() / "front"
    front_dir.mkdir(parents=True, exist_ok=True)
    (front_dir / "tmp").mkdir(exist_ok=True)
    worker_user = _worker_user()
    if worker_user is None:
        os.chmod(front_dir, 0o700)
    else:
        check_traversable(front_dir, user=worker_user)
        os.chown(front_dir, 0, grp.getgrnam(worker_user).gr_gid)
        os.chmod(front_dir, 0o710)
        # nginx (as root) makes tmp/body and the others and gives them to its workers,
        # which must get through tmp/ itself.
        entry = pwd.getpwnam(worker_user)
        os.chown(front_dir / "tmp", entry.pw_uid, entry.pw_gid)
        os.chmod(front_dir / "tmp", 0o700)
    return render(
        template=template,
        out=front_dir / CONF_NAME,
        front_dir=front_dir,
        port=port,
        bind=bind,
        max_body=max_attachment + BODY_MARGIN,
        tls=tls,
        worker_user=worker_user,
        forwarded_proto="$http_x_forwarded_proto" if behind_tls_proxy else "$scheme",
        broker_auth_port=broker_auth_port,
    )


def _worker_user() -> str | None:
    """The user nginx's workers drop to, or None when they stay whoever started nginx."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(WORKER_USER)
    except KeyError:
        raise RuntimeError(
            f"nginx started as root needs the {WORKER_USER} user for its workers (Debian's nginx package makes it)"
        ) from None
    return WORKER_USER
