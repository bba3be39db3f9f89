"""Who may do what on the broker: topics, typed access operations, and broker commands.

Pure functions and data, no MQTT client and no Django. Services build access operations
with the dataclasses below (each checks its fields when made, so a wrong one fails the
request that made it); the outbox stores them as JSON (`to_json`), and the relay reads
them back (`access_op_from_json`, ValueError for anything it cannot understand) and turns
them into broker commands with `commands(op)`, sent over its one admin connection
(`chatserver.mqtt.BrokerConnection.control`). Everything Mosquitto-specific about access
is in `DynsecAccess`; RabbitMQ's is in `chatserver.rabbit_access.RabbitAccess`; both
implement `Access`, and the relay does not know which one it has (settings.BROKER picks).

Access operations (all idempotent: replaying any sequence of them ends in the same state):

    UserAdd(user=5)
        the user's role and group: subscribe + receive on chat/users/5
    DeviceAdd(user=5, username=..., password=..., client_id=...)
        one login = one device account, in the user's group, bound to its client id, with
        a role of its own: publish (presence and Last Will) on its own presence topic only,
        chat/presence/5/<client_id>
    DeviceRemove(user=5, username=..., client_id=...)
        deletes the account; the broker drops its live connection at once; also clears
        the device's retained presence (see `publishes`)
    ChatAdd(chat=7)
        the chat's role: subscribe + receive on chat/chats/7 and chat/chats/7/typing
    MemberGrant(chat=7, user=5) / MemberRevoke(chat=7, user=5)
        the chat's role added to / removed from the user's group
    ChatRemove(chat=7)
        the chat's role (every member loses access)

Mosquitto 2.0.11 facts this relies on (tests/chatserver/test_broker_access.py checks them):
- dynsec ACLs have no %u/%c substitution, hence one role + group per user, one role per chat.
- A device account is bound to its client id: another account presenting that client id is
  refused, so nobody takes over a device's session.
- Default access is deny for publishClientSend, publishClientReceive and subscribe; every
  subscribe grant comes with a receive grant, so revoking a chat also stops delivery of
  what is queued for, or later published to, an offline ex-member's persistent session.
- Every change of a client's roles (member_grant, member_revoke, chat_remove) makes the
  broker disconnect that user's live connections; clients reconnect and keep their
  persistent sessions. device_add disconnects nobody.
- These disconnections (and device_remove's) do NOT send the Last Will, and a removed
  device's retained presence stays on the broker: the server publishes an empty retained
  message to `presence_topic(user, client_id)` to clear it.
- Client ids must be unique forever (never reused for another account): a broker session
  outlives its account until `persistent_client_expiration`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

Command = dict[str, Any]

PRESENCE_FILTER = "chat/presence/+/+"
# What user roles of the first version allowed devices to publish on (see UserAdd).
LEGACY_PRESENCE_FILTER = "chat/presence/{user}/+"
# What the server itself publishes to (events) and clears (stale presence).
SERVER_PUBLISH_FILTER = "chat/#"

_FORBIDDEN_IN_ID = set("/+#\x00")


def user_topic(user_id: int) -> str:
    return f"chat/users/{_id(user_id)}"


def chat_topic(chat_id: int) -> str:
    return f"chat/chats/{_id(chat_id)}"


def typing_topic(chat_id: int) -> str:
    """A chat's ephemeral stream (`typing.updated`, QoS 0): a topic of its own, so that
    phones subscribe to it at QoS 0 and no broker queues it for an offline session
    (RabbitMQ 3.10 queues a QoS 0 publish on a topic subscribed at QoS 1)."""
    return f"chat/chats/{_id(chat_id)}/typing"


def chat_topics(chat_id: int) -> tuple[str, str]:
    """Every topic a member of the chat may subscribe to: its stream and its typing."""
    return chat_topic(chat_id), typing_topic(chat_id)


def presence_topic(user_id: int, client_id: str) -> str:
    return f"chat/presence/{_id(user_id)}/{_client_id(client_id)}"


def device_username(device_id: int) -> str:
    """A device's broker account name (accounts.models.Device.mqtt_username)."""
    return f"device-{_id(device_id)}"


# Letters, digits and "-" only: the same text as a regular expression (see below).
_DEVICE_CLIENT_ID = "chat-{user}-{device}"


def device_client_id(user_id: int, device_id: int) -> str:
    """A device's MQTT client id (accounts.models.Device.mqtt_client_id): it carries the
    user and the device, so a broker's session queue names both."""
    return _DEVICE_CLIENT_ID.format(user=_id(user_id), device=_id(device_id))


_DEVICE_USERNAME_RE = re.compile(r"device-([1-9][0-9]{0,17})")
_DEVICE_CLIENT_ID_RE = re.compile(r"chat-([1-9][0-9]{0,17})-([1-9][0-9]{0,17})")


def parse_device_username(username: str) -> int | None:
    """The device id of a device's account name, or None if it is not one."""
    match = _DEVICE_USERNAME_RE.fullmatch(username)
    return int(match[1]) if match else None


def parse_device_client_id(client_id: str) -> tuple[int, int] | None:
    """(user_id, device_id) of a device's client id, or None if it is not one."""
    match = _DEVICE_CLIENT_ID_RE.fullmatch(client_id)
    return (int(match[1]), int(match[2])) if match else None


_EVENT_TOPIC_RE = re.compile(r"chat/(users|chats)/([1-9][0-9]{0,17})(/typing)?")


def parse_event_topic(topic: str) -> tuple[str, int] | None:
    """("users", user_id) of a user topic, ("chats", chat_id) of a chat topic, ("typing",
    chat_id) of a chat's typing topic, or None if `topic` is none of them (exactly as
    `user_topic`, `chat_topic` and `typing_topic` write them)."""
    match = _EVENT_TOPIC_RE.fullmatch(topic)
    if match is None or (match[3] and match[1] != "chats"):
        return None
    return ("typing" if match[3] else match[1]), int(match[2])


def parse_presence_topic(topic: str) -> tuple[int, str] | None:
    """(user_id, client_id) of a presence topic, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["chat", "presence"] or not parts[3]:
        return None
    if not parts[2].isdigit():
        return None
    return int(parts[2]), parts[3]


def _id(value: Any) -> int:
    # bool is an int: refuse it, and anything that is not a positive integer.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"an id must be a positive integer, got {value!r}")
    return value


def _client_id(value: Any) -> str:
    if not isinstance(value, str) or not value or _FORBIDDEN_IN_ID & set(value):
        raise ValueError(f"a client id must be a non-empty string without / + # NUL: {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


# --- RabbitMQ's names (its MQTT plugin, 3.10) -------------------------------------------------

# Where the MQTT plugin publishes and binds: MQTT topics are routing keys on this exchange.
RABBITMQ_EXCHANGE = "amq.topic"
# A persistent session's queue (subscriptions at QoS 1) and a clean session's (QoS 0).
_SESSION_QUEUE = "mqtt-subscription-{client_id}qos{qos}"
_SESSION_QUEUE_RE = re.compile(r"mqtt-subscription-(.+)qos[01]")


def rabbitmq_session_queues(client_id: str) -> tuple[str, ...]:
    """The names of a client's session queues (QoS 0 and QoS 1); none for a bad id."""
    try:
        client_id = _client_id(client_id)
    except ValueError:
        return ()
    return tuple(_SESSION_QUEUE.format(client_id=client_id, qos=qos) for qos in (0, 1))


def rabbitmq_user_queues_regex(user_id: int) -> str:
    """A regular expression (the management API's `use_regex`) matching the session queues
    of every device of the user (their client ids: `device_client_id`)."""
    client_id = _DEVICE_CLIENT_ID.format(user=_id(user_id), device="[0-9]+")
    return "^" + _SESSION_QUEUE.format(client_id=client_id, qos="[01]") + "$"


def rabbitmq_queue_client_id(queue: str) -> str | None:
    """The client id of a session queue's name, or None if it is not one."""
    match = _SESSION_QUEUE_RE.fullmatch(queue)
    return match[1] if match else None


def topic_routing_key(topic: str) -> str:
    """The routing key RabbitMQ's MQTT plugin uses for an MQTT topic: `/` and `.` swapped."""
    return topic.translate(_SWAP)


def routing_key_topic(routing_key: str) -> str | None:
    """The MQTT topic of a routing key, or None for a pattern (`#`, `*`: a wildcard
    subscription) or something no topic maps to."""
    if not routing_key or "#" in routing_key or "*" in routing_key or "+" in routing_key or "\x00" in routing_key:
        return None
    return routing_key.translate(_SWAP)


_SWAP = str.maketrans("./", "/.")


# --- access operations --------------------------------------------------------------------

# Field name -> the check its value must pass (returns it, or raises ValueError).
_CHECKS = {"user": _id, "chat": _id, "username": _text, "password": _text, "client_id": _client_id}


@dataclass(frozen=True)
class AccessOp:
    """One broker access change. Subclasses name their `op` and their fields; every field
    is checked when the operation is made."""

    op: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                _CHECKS[f.name](getattr(self, f.name))
            except ValueError as exc:
                raise ValueError(f"{self.op}.{f.name}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class UserAdd(AccessOp):
    op = "user_add"
    user: int


@dataclass(frozen=True)
class DeviceAdd(AccessOp):
    op = "device_add"
    user: int
    username: str
    password: str = dataclasses.field(repr=False)
    client_id: str


@dataclass(frozen=True)
class DeviceRemove(AccessOp):
    op = "device_remove"
    user: int
    username: str
    client_id: str


@dataclass(frozen=True)
class ChatAdd(AccessOp):
    op = "chat_add"
    chat: int


@dataclass(frozen=True)
class MemberGrant(AccessOp):
    op = "member_grant"
    chat: int
    user: int


@dataclass(frozen=True)
class MemberRevoke(AccessOp):
    op = "member_revoke"
    chat: int
    user: int


@dataclass(frozen=True)
class ChatRemove(AccessOp):
    op = "chat_remove"
    chat: int


ACCESS_OPS: dict[str, type[AccessOp]] = {
    cls.op: cls for cls in (UserAdd, DeviceAdd, DeviceRemove, ChatAdd, MemberGrant, MemberRevoke, ChatRemove)
}


def access_op_from_json(value: Any) -> AccessOp:
    """An operation as stored in the outbox, checked again (ValueError if it is not one)."""
    if not isinstance(value, dict):
        raise ValueError(f"an access operation is a JSON object, got {value!r}")
    fields = dict(value)
    cls = ACCESS_OPS.get(fields.pop("op", None))
    if cls is None:
        raise ValueError(f"unknown access operation: {value.get('op')!r}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValueError(f"{cls.op}: {exc}") from None


# --- the interface the relay uses ------------------------------------------------------------


class AccessUnavailable(Exception):
    """The broker's access API cannot be reached now: the row stays queued and is tried
    again, like a publish on a dropped connection."""


class AccessRefused(Exception):
    """The broker refused an access change for good: the row is set aside (dead letter)."""


class Access(Protocol):
    """What the relay does with an outbox row's access operations, whatever the broker.

    For each row, in outbox order: `apply(op)` for each of its ops, synchronously (work
    done over another channel than the relay's MQTT connection, e.g. RabbitMQ's
    management API: it is over before anything after it is sent), then `commands(op)`
    pipelined on the MQTT connection (Mosquitto's dynsec: the broker handles them before
    the publishes that follow), then `publishes(op)` and the row's events. `baseline()`
    runs on every (re)connect; `is_benign` tells which command errors mean "already so".
    """

    def baseline(self) -> list[Command]: ...

    def applies(self, op: AccessOp) -> bool:
        """Whether `op` has synchronous work (`apply`): the relay then waits for what it
        sent before, and sends nothing after it until that work is done."""

    def apply(self, op: AccessOp, *, created_at: float, pause: Callable[[float], None]) -> None:
        """Do `op`'s synchronous work (`created_at`: the row's time, epoch seconds;
        `pause(seconds)`: how the relay waits, keeping its heartbeat). Raises
        AccessUnavailable or AccessRefused."""

    def commands(self, op: AccessOp) -> list[Command]: ...

    def publishes(self, op: AccessOp) -> list[tuple[str, bytes]]: ...

    def is_benign(self, command: Command, error: str) -> bool: ...

    def is_not_yet(self, command: Command, error: str) -> bool:
        """Whether `error` means a command came before one of another partition's rows it
        depends on (send it again for a while); False where no command depends on another."""


class DynsecAccess:
    """Access operations as Mosquitto dynamic-security commands."""

    CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
    RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
    # The role `mosquitto_ctrl dynsec init` gives the admin account, whatever its name.
    ADMIN_ROLE = "admin"

    # Errors (exact 2.0.11 texts) meaning "already as wanted", per command.
    BENIGN_ERRORS: dict[str, frozenset[str]] = {
        "createClient": frozenset({"Client already exists"}),
        "createGroup": frozenset({"Group already exists"}),
        "createRole": frozenset({"Role already exists"}),
        "deleteClient": frozenset({"Client not found"}),
        "deleteRole": frozenset({"Role not found"}),
        # Already granted; or, replayed, the chat was removed by a later op (chat_remove).
        # ("Group not found" is NOT benign: users are never removed, so it means an
        # operation came before its user_add.)
        "addGroupRole": frozenset({"Group is already in this role", "Role not found"}),
        # Removing an absent grant succeeds; a removed chat or user means no grant either.
        "removeGroupRole": frozenset({"Role not found", "Group not found"}),
        "addRoleACL": frozenset({"ACL with this topic already exists"}),
        "removeRoleACL": frozenset({"ACL not found"}),
    }

    # --- names -------------------------------------------------------------------------

    @staticmethod
    def user_role(user_id: int) -> str:
        return f"user-{_id(user_id)}"

    @staticmethod
    def user_group(user_id: int) -> str:
        return f"user-{_id(user_id)}"

    @staticmethod
    def device_role(username: str) -> str:
        return f"device-{_text(username)}"

    @staticmethod
    def chat_role(chat_id: int) -> str:
        return f"chat-{_id(chat_id)}"

    # --- what must always hold ---------------------------------------------------------

    @classmethod
    def default_acl_access(cls) -> list[dict[str, Any]]:
        # Receive defaults to allow in dynsec: deny it, so access is exactly what roles grant.
        return [
            {"acltype": "publishClientSend", "allow": False},
            {"acltype": "publishClientReceive", "allow": False},
            {"acltype": "subscribe", "allow": False},
            {"acltype": "unsubscribe", "allow": True},
        ]

    @classmethod
    def admin_acls(cls) -> list[dict[str, Any]]:
        # `dynsec init` lets the admin subscribe to and receive everything, but publish only
        # to $CONTROL: it also publishes the events.
        return [
            {"acltype": "publishClientSend", "topic": SERVER_PUBLISH_FILTER, "allow": True},
        ]

    @classmethod
    def baseline(cls) -> list[Command]:
        """Commands to run on every (re)connect of the relay; all idempotent.

        Neither disconnects anyone when the state is already as wanted (the normal case:
        `seed_config` wrote it into the file); adding a missing admin ACL disconnects the
        relay itself once, and the next baseline then answers "already exists".
        """
        return [
            {"command": "setDefaultACLAccess", "acls": cls.default_acl_access()},
            *(
                {"command": "addRoleACL", "rolename": cls.ADMIN_ROLE, **acl}
                for acl in cls.admin_acls()
            ),
        ]

    @classmethod
    def seed_config(cls, config: dict[str, Any]) -> None:
        """Write the baseline into a fresh dynamic-security JSON (before the broker reads it)."""
        config["defaultACLAccess"] = {
            acl["acltype"]: acl["allow"] for acl in cls.default_acl_access()
        }
        for role in config.get("roles", []):
            if role.get("rolename") == cls.ADMIN_ROLE:
                acls = role.setdefault("acls", [])
                for acl in cls.admin_acls():
                    if not any(
                        a.get("acltype") == acl["acltype"] and a.get("topic") == acl["topic"]
                        for a in acls
                    ):
                        acls.append(dict(acl))
                break
        else:
            raise ValueError(f"no {cls.ADMIN_ROLE!r} role in the dynamic-security config")

    # --- operations --------------------------------------------------------------------

    @staticmethod
    def applies(op: AccessOp) -> bool:
        # On Mosquitto everything goes over the MQTT connection, pipelined (`commands`).
        return False

    def apply(self, op: AccessOp, *, created_at: float, pause: Callable[[float], None]) -> None:
        """Nothing (see `applies`)."""

    @classmethod
    def commands(cls, op: AccessOp) -> list[Command]:
        """The dynsec commands applying `op`, in order."""
        match op:
            case UserAdd(user=user):
                topic = user_topic(user)
                return [
                    {
                        "command": "createRole",
                        "rolename": cls.user_role(user),
                        "acls": [
                            {"acltype": "subscribeLiteral", "topic": topic, "allow": True},
                            {"acltype": "publishClientReceive", "topic": topic, "allow": True},
                        ],
                    },
                    {
                        "command": "createGroup",
                        "groupname": cls.user_group(user),
                        "roles": [{"rolename": cls.user_role(user)}],
                    },
                    # The first version let a user publish on every presence topic under
                    # its id (any client id): devices now have a role each (DeviceAdd).
                    # Gone from roles made since; an upgrade replays UserAdd to drop it.
                    {
                        "command": "removeRoleACL",
                        "rolename": cls.user_role(user),
                        "acltype": "publishClientSend",
                        "topic": LEGACY_PRESENCE_FILTER.format(user=user),
                    },
                ]
            case DeviceAdd():
                return [
                    {
                        # The device may publish (its presence, its Last Will) on its own
                        # presence topic only: no other device's, no made-up one.
                        "command": "createRole",
                        "rolename": cls.device_role(op.username),
                        "acls": [
                            {
                                "acltype": "publishClientSend",
                                "topic": presence_topic(op.user, op.client_id),
                                "allow": True,
                            }
                        ],
                    },
                    {
                        "command": "createClient",
                        "username": op.username,
                        "password": op.password,
                        # The binding: this account connects with this client id only.
                        "clientid": op.client_id,
                        "groups": [{"groupname": cls.user_group(op.user)}],
                        "roles": [{"rolename": cls.device_role(op.username)}],
                    },
                    # An account that existed already (a replay, or one made by the first
                    # version, without a role of its own) gets exactly these.
                    {
                        "command": "modifyClient",
                        "username": op.username,
                        "groups": [{"groupname": cls.user_group(op.user)}],
                        "roles": [{"rolename": cls.device_role(op.username)}],
                    },
                ]
            case DeviceRemove(username=username):
                return [
                    {"command": "deleteClient", "username": username},
                    {"command": "deleteRole", "rolename": cls.device_role(username)},
                ]
            case ChatAdd(chat=chat):
                acls = [
                    {"acltype": acltype, "topic": topic, "allow": True}
                    for topic in chat_topics(chat)
                    for acltype in ("subscribeLiteral", "publishClientReceive")
                ]
                return [
                    {"command": "createRole", "rolename": cls.chat_role(chat), "acls": acls},
                    # A role made before the typing topic existed gets its grants (a
                    # replay: chats/migrations/0007); "already exists" for a new one.
                    *(
                        {"command": "addRoleACL", "rolename": cls.chat_role(chat), **acl}
                        for acl in acls if acl["topic"] == typing_topic(chat)
                    ),
                ]
            case MemberGrant(chat=chat, user=user) | MemberRevoke(chat=chat, user=user):
                return [
                    {
                        "command": "addGroupRole" if isinstance(op, MemberGrant) else "removeGroupRole",
                        "groupname": cls.user_group(user),
                        "rolename": cls.chat_role(chat),
                    }
                ]
            case ChatRemove(chat=chat):
                return [{"command": "deleteRole", "rolename": cls.chat_role(chat)}]
        raise ValueError(f"not an access operation: {op!r}")

    @staticmethod
    def publishes(op: AccessOp) -> list[tuple[str, bytes]]:
        """Retained messages to publish after `op`'s commands: (topic, payload).

        A device the broker disconnects leaves no Last Will, so removing one clears its
        retained presence itself; otherwise it would look online forever.
        """
        if isinstance(op, DeviceRemove):
            return [(presence_topic(op.user, op.client_id), b"")]
        return []

    # Errors (exact 2.0.11 texts) meaning "not yet": what the command needs comes from a
    # row of another relay partition that may not be sent yet (a member grant before its
    # user's user_add). The relay sends the row again for a while (chatserver/relay.py).
    NOT_YET_ERRORS: dict[str, frozenset[str]] = {
        "addGroupRole": frozenset({"Group not found"}),
    }

    @classmethod
    def is_not_yet(cls, command: Command, error: str) -> bool:
        """Whether `error`, answered to `command`, may pass once another partition's rows
        are applied (see NOT_YET_ERRORS)."""
        return error in cls.NOT_YET_ERRORS.get(command.get("command", ""), ())

    @classmethod
    def is_benign(cls, command: Command, error: str) -> bool:
        """Whether `error`, answered to `command`, means the state is already as wanted."""
        return error in cls.BENIGN_ERRORS.get(command.get("command", ""), ())
