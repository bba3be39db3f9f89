"""Typing indicators: ephemeral, never stored (`chatserver.ephemeral`)."""

from accounts.models import User
from chats.services.common import membership_may_post
from chatserver import ephemeral
from chatserver.broker_access import typing_topic
from chatserver.events import Event, EventType

# Clients say "typing" again every RESEND seconds while the user types; the others show
# it for EXPIRES seconds after the last one they got (unless "stopped" or a message from
# that member comes first). EXPIRES leaves room for one lost or held repeat.
RESEND = 5
EXPIRES = 8


def typing_update(*, actor: User, chat_id: int, typing: bool) -> bool:
    """Tell the chat's members (on its typing topic, QoS 0) that the caller is typing or stopped;
    True if it was handed on (False where there is no NOTIFY: SQLite).

    Who may: those who may post (`membership_may_post`: 404 for outsiders, 403 for
    restricted members and a blocked pair), checked in one query (two in a direct chat);
    then one `pg_notify`. No row is written and no MQTT connection is opened: the relay
    publishes it, at most one per member and chat per second (`ephemeral.Gate`).
    """
    membership_may_post(chat_id=chat_id, user_id=actor.id)
    event = Event(
        type=EventType.TYPING_UPDATED,
        chat=chat_id,
        data={"user": actor.id, "typing": typing, "expires_in": EXPIRES if typing else 0},
    )
    return ephemeral.publish(
        event=event, topic=typing_topic(chat_id), key=f"typing:{chat_id}:{actor.id}", state="1" if typing else "0"
    )
