"""Profiles: one simulated phone each, kept as JSON files under the home directory.

Layout of the home (`--home`, else `$CHAT_SIM_HOME`, else `~/.chat-sim`):

    profiles/<name>.json   server, user, device token, MQTT credentials, and the phone's
                           read cursors: the newest message id seen and the highest
                           chat version handled per chat (what `listen` catches up from)
    load/                  cached load-test users per server (see `chat_sim.load`)

Guarantees: files holding a token are created 0600 inside 0700 directories, and every
write replaces the file atomically (a crash never leaves half a profile).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The stack `make run` starts on this machine (which honours HTTP_PORT too).
DEFAULT_SERVER = f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '').strip() or '8000'}"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")


def home_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("CHAT_SIM_HOME") or Path.home() / ".chat-sim").expanduser()


@dataclass
class Profile:
    """One phone: where it talks to, who it is there, and what it has seen."""

    name: str
    server: str = DEFAULT_SERVER
    user_id: int | None = None
    username: str | None = None
    token: str | None = None
    mqtt: dict | None = None
    device_name: str = ""
    # chat id (as a string: JSON keys) -> newest message id this phone has shown
    cursors: dict[str, int] = field(default_factory=dict)
    # chat id -> the chat's version up to which this phone has every change (sync cursor)
    versions: dict[str, int] = field(default_factory=dict)
    # The push token this phone registered, and the stand-in FCM (`fcm-sink`) that gets its
    # pushes, if any: `listen --background` shows what came while away.
    push_token: str | None = None
    fcm_sink: str | None = None

    @property
    def signed_in(self) -> bool:
        return bool(self.token and self.user_id)

    def adopt_session(self, session: dict, server: str) -> None:
        """Take the answer of signup/login: a new device, so its cursors start afresh."""
        self.server = server
        self.user_id = session["id"]
        self.username = session["username"]
        self.token = session["token"]
        self.mqtt = session["mqtt"]
        self.cursors = {}
        self.versions = {}

    def forget_session(self) -> None:
        self.user_id = self.username = self.token = self.mqtt = None
        self.cursors = {}
        self.versions = {}


class ProfileStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / "profiles"

    def path(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad profile name {name!r}: use letters, digits and . _ @ + -")
        return self.dir / f"{name}.json"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Profile:
        """The stored profile, or a new empty one (not written until `save`)."""
        try:
            data = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            return Profile(name=name)
        known = Profile.__dataclass_fields__
        return Profile(**{k: v for k, v in data.items() if k in known} | {"name": name})

    def save(self, profile: Profile) -> None:
        write_private_json(self.path(profile.name), asdict(profile))

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json")) if self.dir.exists() else []

    def hold_connection(self, name: str):
        """Claim the profile's MQTT connection for this process, for as long as it lives;
        ProfileBusy if another process holds it. A profile is one device with one client
        id: two processes connecting with it would kick each other off the broker."""
        path = self.path(name).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ProfileBusy(name, holder) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._held = getattr(self, "_held", []) + [f]  # released when the process ends


class ProfileBusy(Exception):
    def __init__(self, name: str, pid: str) -> None:
        super().__init__(
            f"profile {name!r} is already connected in another chat-sim process (pid {pid}): a profile is "
            f"one device, and two connections with its client id would kick each other off the broker. "
            f"Use that process, or sign this user in as a second device: "
            f"chat-sim -p {name}-2 login <username>"
        )


def write_private_json(path: Path, data) -> None:
    """Write JSON atomically, readable by the owner only (it holds tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
