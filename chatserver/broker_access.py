"""Who may do what on the broker: topics, and access operations turned into broker commands.

Pure functions and data, no MQTT client and no Django: the outbox stores access operations
as plain JSON dicts, the relay turns them into broker commands with `commands(op)` and
sends those over its one admin connection (`chatserver.mqtt.BrokerConnection.control`).
Everything Mosquitto-specific about access is in `DynsecAccess`; another broker (the planned
RabbitMQ cluster) gets another class with the same methods.

Access operations (all idempotent: replaying any sequence of them ends in the same state):

    {"op": "user_add", "user": 5}
        the user's role and group: subscribe + receive on chat/users/5, publish (presence
        and Last Will) on chat/presence/5/+
    {"op": "device_add", "user": 5, "username": "...", "password": "...", "client_id": "..."}
        one login = one device account, in the user's group, bound to its client id
    {"op": "device_remove", "username": "...", "user": 5, "client_id": "..."}
        deletes the account; the broker drops its live connection at once; with `user`
        and `client_id`, also clears the device's retained presence (see `publishes`)
    {"op": "chat_add", "chat": 7}
        the chat's role: subscribe + receive on chat/chats/7
    {"op": "member_grant", "chat": 7, "user": 5} / {"op": "member_revoke", "chat": 7, "user": 5}
        the chat's role added to / removed from the user's group
    {"op": "chat_remove", "chat": 7}
        the chat's role (every member loses access)

Mosquitto 2.0.11 facts this relies on (tests/test_broker_access.py checks them):
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

from typing import Any

Op = dict[str, Any]
Command = dict[str, Any]

PRESENCE_FILTER = "chat/presence/+/+"
# What the server itself publishes to (events) and clears (stale presence).
SERVER_PUBLISH_FILTER = "chat/#"

_FORBIDDEN_IN_ID = set("/+#\x00")


def user_topic(user_id: int) -> str:
    return f"chat/users/{_id(user_id)}"


def chat_topic(chat_id: int) -> str:
    return f"chat/chats/{_id(chat_id)}"


def presence_topic(user_id: int, client_id: str) -> str:
    return f"chat/presence/{_id(user_id)}/{_client_id(client_id)}"


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


def _text(op: Op, key: str) -> str:
    value = op.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{op.get('op')}: {key!r} must be a non-empty string")
    return value


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
    }

    # --- names -------------------------------------------------------------------------

    @staticmethod
    def user_role(user_id: int) -> str:
        return f"user-{_id(user_id)}"

    @staticmethod
    def user_group(user_id: int) -> str:
        return f"user-{_id(user_id)}"

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

    @classmethod
    def commands(cls, op: Op) -> list[Command]:
        """The dynsec commands applying `op`, in order (ValueError for a bad op)."""
        if not isinstance(op, dict):
            raise ValueError(f"an access operation is a dict, got {op!r}")
        kind = op.get("op")
        if kind == "user_add":
            user = _id(op.get("user"))
            topic = user_topic(user)
            return [
                {
                    "command": "createRole",
                    "rolename": cls.user_role(user),
                    "acls": [
                        {"acltype": "subscribeLiteral", "topic": topic, "allow": True},
                        {"acltype": "publishClientReceive", "topic": topic, "allow": True},
                        {
                            "acltype": "publishClientSend",
                            "topic": f"chat/presence/{user}/+",
                            "allow": True,
                        },
                    ],
                },
                {
                    "command": "createGroup",
                    "groupname": cls.user_group(user),
                    "roles": [{"rolename": cls.user_role(user)}],
                },
            ]
        if kind == "device_add":
            user = _id(op.get("user"))
            return [
                {
                    "command": "createClient",
                    "username": _text(op, "username"),
                    "password": _text(op, "password"),
                    # The binding: this account connects with this client id only.
                    "clientid": _client_id(op.get("client_id")),
                    "groups": [{"groupname": cls.user_group(user)}],
                }
            ]
        if kind == "device_remove":
            return [{"command": "deleteClient", "username": _text(op, "username")}]
        if kind == "chat_add":
            chat = _id(op.get("chat"))
            topic = chat_topic(chat)
            return [
                {
                    "command": "createRole",
                    "rolename": cls.chat_role(chat),
                    "acls": [
                        {"acltype": "subscribeLiteral", "topic": topic, "allow": True},
                        {"acltype": "publishClientReceive", "topic": topic, "allow": True},
                    ],
                }
            ]
        if kind in ("member_grant", "member_revoke"):
            chat, user = _id(op.get("chat")), _id(op.get("user"))
            return [
                {
                    "command": "addGroupRole" if kind == "member_grant" else "removeGroupRole",
                    "groupname": cls.user_group(user),
                    "rolename": cls.chat_role(chat),
                }
            ]
        if kind == "chat_remove":
            return [{"command": "deleteRole", "rolename": cls.chat_role(_id(op.get("chat")))}]
        raise ValueError(f"unknown access operation: {kind!r}")

    @staticmethod
    def publishes(op: Op) -> list[tuple[str, bytes]]:
        """Retained messages to publish after `op`'s commands: (topic, payload).

        A device the broker disconnects leaves no Last Will, so removing one clears its
        retained presence itself; otherwise it would look online forever.
        """
        if op.get("op") == "device_remove" and "client_id" in op:
            return [(presence_topic(op["user"], op["client_id"]), b"")]
        return []

    @classmethod
    def is_benign(cls, command: Command, error: str) -> bool:
        """Whether `error`, answered to `command`, means the state is already as wanted."""
        return error in cls.BENIGN_ERRORS.get(command.get("command", ""), ())
