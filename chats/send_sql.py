"""The SQL of the hottest path, the message send, kept apart and small.

Why hand-written SQL: measured on 2 cores (see the README's bench section), the ORM send
took 10 round trips; one data-modifying CTE statement that checks the author may post,
takes the next seq and version under the chat's row lock, inserts the message and moves
the author's pointers does it in one, which nearly doubled the saturated send rate and
holds the chat's lock for the shortest time. SQLite has `UPDATE ... RETURNING` but no
data-modifying CTE, so it gets the same checks in `SEQ_BUMP` and the ORM for the rest
(`chats.services.message_send`); the suite runs the send tests on both databases.

Table and column names come from the models' `_meta`, so a rename in a model cannot leave
this file behind; every value, the role and kind names included, is a parameter. The
statements take these parameters:

    chat, author, now: the chat id, the author's id, the message's time
    device, token_hash: the sending device's id and token hash, whose row must still be
    there with that hash and an active user (None, None: not checked; see `params`)
    restricted, group: `Membership.Role.RESTRICTED` and `Chat.Kind.GROUP` (see `params`)
    type, content, reply_to, client_id, mentions: the message's columns (SEND only;
    mentions as JSON text)
    payload, outbox_chat, partition_key, partition: the `message.created` row's
    (`row_params`, SEND only; payload None: no row, the caller queues it)
    push_kind: the push job's kind, None for none (SEND only)
"""

from django.db.models import Model

from accounts.models import Block, Device, User
from chats.models import Chat, Membership, Message
from chatserver.models import OutboxEvent, PushJob
from chatserver.outbox import RowTemplate


def _table(model: type[Model]) -> str:
    return model._meta.db_table


def _col(model: type[Model], field: str) -> str:
    return model._meta.get_field(field).column


def params(*, chat_id: int, author_id: int, now, device: Device | None = None, **message) -> dict:
    """The parameters of these statements (`message`: SEND's others, see above).
    `device`: the device the request came from, checked by the statement itself (the
    message POST's token may come from a cache: `accounts.authentication`); None for
    callers that checked their actor otherwise."""
    return {
        "chat": chat_id,
        "author": author_id,
        "now": now,
        "device": None if device is None else device.id,
        "token_hash": None if device is None else device.token_hash,
        "restricted": Membership.Role.RESTRICTED.value,
        "group": Chat.Kind.GROUP.value,
        **message,
    }


def row_params(row: RowTemplate | None) -> dict:
    """SEND's parameters for its outbox row (`chatserver.outbox.row_template`); None: no row."""
    if row is None:
        return {"payload": None, "outbox_chat": None, "partition_key": None, "partition": None}
    return {"payload": row.payload, "outbox_chat": row.chat_id, "partition_key": row.partition_key,
            "partition": row.partition}


CHAT, MEMBERSHIP, MESSAGE, BLOCK = _table(Chat), _table(Membership), _table(Message), _table(Block)
DEVICE, USER = _table(Device), _table(User)
D_USER, D_TOKEN_HASH, U_ACTIVE = _col(Device, "user"), _col(Device, "token_hash"), _col(User, "is_active")
M_CHAT, M_USER, M_ROLE = _col(Membership, "chat"), _col(Membership, "user"), _col(Membership, "role")
B_USER, B_BLOCKED = _col(Block, "user"), _col(Block, "blocked")
C_KIND, C_LAST_SEQ, C_VERSION, C_ACTIVITY = (
    _col(Chat, "kind"), _col(Chat, "last_seq"), _col(Chat, "version"), _col(Chat, "activity_at")
)

# The sending device is still signed in: its row is there with the token hash the request
# showed, and its user is active. Logout, sign-out and deactivation delete the row (or
# clear is_active) in their own committed transaction, so the next POST's statement sees
# it whatever a process's token cache holds. A primary-key lookup: ~no cost.
DEVICE_VALID = f"""
    (CAST(%(device)s AS bigint) IS NULL OR EXISTS (
        SELECT 1 FROM {DEVICE} d JOIN {USER} u ON u.id = d.{D_USER}
        WHERE d.id = %(device)s AND d.{D_TOKEN_HASH} = %(token_hash)s AND d.{D_USER} = %(author)s
          AND u.{U_ACTIVE}))
"""

# Who may post, as a condition on the chat row being updated: the device is still signed
# in, the author a member that is not restricted, and in a direct chat neither side has
# blocked the other.
MAY_POST = f"""
    {DEVICE_VALID} AND EXISTS (
        SELECT 1 FROM {MEMBERSHIP}
        WHERE {M_CHAT} = %(chat)s AND {M_USER} = %(author)s AND {M_ROLE} <> %(restricted)s)
    AND ({C_KIND} = %(group)s OR NOT EXISTS (
        SELECT 1 FROM {MEMBERSHIP} other JOIN {BLOCK} b
          ON (b.{B_USER} = other.{M_USER} AND b.{B_BLOCKED} = %(author)s)
          OR (b.{B_USER} = %(author)s AND b.{B_BLOCKED} = other.{M_USER})
        WHERE other.{M_CHAT} = %(chat)s AND other.{M_USER} <> %(author)s))
"""

_MEMBER_IDS = f"ARRAY(SELECT {M_USER} FROM {MEMBERSHIP} WHERE {M_CHAT} = %(chat)s)"

# SQLite: takes the next seq and version (and the chat's row lock) only if the author may
# post; returns (seq, version), or no row.
SEQ_BUMP = f"""
    UPDATE {CHAT} SET {C_LAST_SEQ} = {C_LAST_SEQ} + 1, {C_VERSION} = {C_VERSION} + 1, {C_ACTIVITY} = %(now)s
    WHERE id = %(chat)s AND {MAY_POST}
    RETURNING {C_LAST_SEQ}, {C_VERSION}
"""

_MSG = {f: _col(Message, f) for f in (
    "chat", "seq", "author", "type", "content", "reply_to", "client_id", "created_at", "deleted", "version",
    "mentions",
)}
_PTR = {f: _col(Membership, f) for f in (
    "last_read_seq", "last_read_message", "last_delivered_seq", "last_delivered_message"
)}

# The numbers SEND fills in the `message.created` row's payload (`chatserver.outbox.slot`):
# the message's id, seq and version (the event's too), and its unread count.
SLOT_ID, SLOT_SEQ, SLOT_VERSION, SLOT_UNREAD = 1, 2, 3, 4
SLOTS = 4

_OUTBOX = {f: _col(OutboxEvent, f) for f in (
    "created_at", "access", "payload", "user_ids", "chat_id", "partition_key", "partition"
)}
_PUSH = {f: _col(PushJob, f) for f in ("created_at", "kind", "data", "attempts", "not_before", "failed", "last_error")}

# PostgreSQL: the whole write in one statement. `bump` takes the next seq and version (and
# the chat's row lock) only if the author may post and has not sent this client_id yet;
# `message` inserts the message with them; `pointer` moves the author's read and delivered
# pointers to it; `queued` inserts its `message.created` outbox row (to the members read
# here, the numbers filled in), `pushed` its push job. Returns (id, seq, version,
# snapshot_was_current, member_ids, outbox_row_id), or no row.
#
# All sub-statements read one snapshot, taken before the statement waits for the lock.
# Every change to a chat's members or roles bumps the chat's version under that lock, so
# when the version grew by our own bump only, the memberships read are those the lock
# protects. Otherwise a send or a member change committed while this one waited: the
# caller reads the checks and member ids again (`RECHECK`), under the lock, and queues the
# event again if the members changed.
SEND = f"""
    WITH seen AS (
        SELECT {C_VERSION} AS version FROM {CHAT} WHERE id = %(chat)s
    ), bump AS (
        UPDATE {CHAT} SET {C_LAST_SEQ} = {C_LAST_SEQ} + 1, {C_VERSION} = {C_VERSION} + 1, {C_ACTIVITY} = %(now)s
        WHERE id = %(chat)s AND {MAY_POST}
          AND NOT EXISTS (
            SELECT 1 FROM {MESSAGE}
            WHERE {_MSG["chat"]} = %(chat)s AND {_MSG["author"]} = %(author)s
              AND {_MSG["client_id"]} = %(client_id)s)
        RETURNING {C_LAST_SEQ} AS seq, {C_VERSION} AS version
    ), message AS (
        INSERT INTO {MESSAGE}
            ({", ".join(_MSG.values())})
        SELECT %(chat)s, seq, %(author)s, %(type)s, %(content)s, %(reply_to)s, %(client_id)s,
               %(now)s, false, version, CAST(%(mentions)s AS jsonb)
        FROM bump
        RETURNING id, {_MSG["seq"]} AS seq, {_MSG["version"]} AS version
    ), pointer AS (
        UPDATE {MEMBERSHIP}
        SET {_PTR["last_read_seq"]} = message.seq, {_PTR["last_read_message"]} = message.id,
            {_PTR["last_delivered_seq"]} = message.seq, {_PTR["last_delivered_message"]} = message.id
        FROM message
        WHERE {MEMBERSHIP}.{M_CHAT} = %(chat)s AND {MEMBERSHIP}.{M_USER} = %(author)s
    ), members AS (
        SELECT {_MEMBER_IDS} AS ids
    ), queued AS (
        INSERT INTO {_table(OutboxEvent)} ({", ".join(_OUTBOX.values())})
        SELECT %(now)s, '[]',
               format(CAST(%(payload)s AS text), message.id, message.seq, message.version,
                      cardinality(members.ids) - 1),
               to_jsonb(members.ids), %(outbox_chat)s, %(partition_key)s, %(partition)s
        FROM message, members
        WHERE CAST(%(payload)s AS text) IS NOT NULL
        RETURNING id
    ), pushed AS (
        INSERT INTO {_table(PushJob)} ({", ".join(_PUSH.values())})
        SELECT %(now)s, CAST(%(push_kind)s AS text), jsonb_build_object('message_id', message.id), 0, %(now)s,
               false, ''
        FROM message
        WHERE CAST(%(push_kind)s AS text) IS NOT NULL
    )
    SELECT message.id, message.seq, message.version, message.version = seen.version + 1,
           members.ids, (SELECT id FROM queued)
    FROM message, seen, members
"""

# Under the chat's lock, in a new statement (hence a new snapshot): may the author still
# post, and who are the members now. Returns (may_post, member_ids).
RECHECK = f"""
    SELECT {MAY_POST}, {_MEMBER_IDS}
    FROM {CHAT} WHERE id = %(chat)s
"""
