"""Read and delivered pointers: how far each member has received and read."""

from django.db import transaction

from accounts.models import User
from chats.errors import ChatNotFound, MessageNotFound
from chats.models import Membership, Message
from chats.services.common import chat_event, member_ids
from chatserver import push
from chatserver.events import EventType


def pointer_move(
    *, actor: User, chat_id: int, message_id: int, read: bool, device_id: int | None = None
) -> Membership:
    """Move the caller's read (read=True) or delivered pointer forward to a message;
    never back. Reading implies delivery. Returns the membership.

    When it moved, the chat's members get `read.updated` (both pointers), unless the actor
    turned read receipts off: then only its own devices are told (to sync unread counts).
    When the read pointer moved, the actor's other devices (not `device_id`, the one that
    read) that sleep are pushed a `read`, to clear their notifications.
    Not under the chat lock: a pointer can only name a message that is already
    committed, and pointers only grow, so concurrent moves need no order.
    """
    membership = Membership.objects.filter(chat_id=chat_id, user=actor).first()
    if membership is None:
        raise ChatNotFound()
    message = Message.objects.filter(chat_id=chat_id, id=message_id).values("id", "seq").first()
    if message is None:
        raise MessageNotFound()
    seq, mid = message["seq"], message["id"]
    with transaction.atomic():
        changes = {"last_delivered_seq": seq, "last_delivered_message_id": mid}
        delivered = Membership.objects.filter(id=membership.id, last_delivered_seq__lt=seq).update(**changes)
        moved = 0
        if read:
            changes = {"last_read_seq": seq, "last_read_message_id": mid}
            moved = Membership.objects.filter(id=membership.id, last_read_seq__lt=seq).update(**changes)
        membership.refresh_from_db()
        if moved or delivered:
            data = {
                "user": actor.id,
                "last_read_message_id": membership.last_read_message_id,
                "last_read_seq": membership.last_read_seq,
                "last_delivered_message_id": membership.last_delivered_message_id,
                "last_delivered_seq": membership.last_delivered_seq,
            }
            if actor.read_receipts:
                recipients = member_ids(chat_id)
            else:
                recipients = [actor.id]
            chat_event(
                chat=chat_id,
                type=EventType.READ_UPDATED,
                data=data,
                user_ids=recipients,
                to_chat_topic=actor.read_receipts,
            )
        if moved:
            push.enqueue(kind="read", data={"chat_id": chat_id, "user_id": actor.id, "device_id": device_id})
    membership.user = actor
    return membership
