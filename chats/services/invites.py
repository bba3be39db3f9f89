"""Answers to invitations (`chats.invites`)."""

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from chats.errors import InvitationExpired, MessageDeleted, MessageNotFound, NotAnInvitation, OwnInvitation
from chats.invites import invite_expired, invite_summary
from chats.models import InviteAnswer, Message
from chats.selectors import MESSAGE_RELATED, messages_annotate
from chats.services.common import lock_chat, membership_may_post, message_updated


def invite_answer(*, actor: User, chat_id: int, message_id: int, answer: str) -> Message:
    """Accept or decline an invitation; return the message (annotated for
    `shapes.message_output`). Once per member, changeable: another answer replaces the
    first (it moves to the end of `answers`); the same answer again changes nothing and
    tells nobody.

    Who may: the members who may post (restricted members and a blocked pair may not),
    but the invitation's author (409 `own_invitation`); not once it has expired (409
    `invitation_expired`), nor a deleted one (409 `message_deleted`); a message that is
    no invitation is 400 `not_an_invitation`. Under the chat's lock: the message takes
    the chat's next version and its new `invite`; members get `message.updated`."""
    with transaction.atomic():
        chat = lock_chat(chat_id)
        membership_may_post(chat_id=chat.id, user_id=actor.id)
        message = Message.objects.filter(chat=chat, id=message_id).select_related(*MESSAGE_RELATED).first()
        if message is None:
            raise MessageNotFound()
        if message.deleted:
            raise MessageDeleted()
        if message.type != Message.Type.INVITE or message.invite is None:
            raise NotAnInvitation()
        if message.author_id == actor.id:
            raise OwnInvitation()
        now = timezone.now()
        if invite_expired(message.invite, now=now):
            raise InvitationExpired()
        mine = InviteAnswer.objects.filter(message=message, user_id=actor.id).first()
        if mine is not None and mine.answer == answer:
            return messages_annotate(chat_id=chat.id, messages=[message])[0]
        if mine is None:
            InviteAnswer.objects.create(message=message, user_id=actor.id, answer=answer, answered_at=now)
        else:
            mine.answer, mine.answered_at = answer, now
            mine.save(update_fields=["answer", "answered_at"])
        answers = list(
            InviteAnswer.objects.filter(message=message).order_by("answered_at", "id").values_list("user_id", "answer", "answered_at")
        )
        message.invite = invite_summary(message.invite, answers=answers)
        message_updated(chat=chat, message=message, fields=["invite"])
    return message
