"""Pins, the archive, forwards and invitations, called directly (service tier; also run
on SQLite, where the send writes through the ORM)."""

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from chats import shapes
from chats.errors import (
    InvitationExpired,
    MessageNotFound,
    NotAllowed,
    OwnInvitation,
    TooManyPinnedChats,
)
from chats.invites import invite_new
from chats.models import Attachment, InviteAnswer, Membership, Message
from chats.selectors import chat_list_queryset
from chats.services import pins
from chats.services.chats import chat_create
from chats.services.invites import invite_answer
from chats.services.members import member_mute, member_remove
from chats.services.message_edit import message_update
from chats.services.message_send import message_send
from chatserver.events import EventType
from tests.support.factories import make_actor

pytestmark = pytest.mark.django_db

GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


def listed(user, *, archived=False) -> list[int]:
    return [m.chat_id for m in chat_list_queryset(user_id=user.id, archived=archived)]


def test_pinned_chats_come_first_the_latest_first_and_a_sixth_is_refused(outbox):
    alice = make_actor()
    chats = [chat_create(actor=alice, member_ids=[make_actor().id], name=f"c{i}")[0] for i in range(6)]
    outbox.clear()

    for chat in (chats[1], chats[3], chats[0], chats[2], chats[4]):
        pins.member_pin(chat_id=chat.id, actor=alice, pinned=True)

    assert listed(alice) == [chats[i].id for i in (4, 2, 0, 3, 1, 5)]
    assert [(r.type, r.user_ids, r.data) for r in outbox.rows][-1] == (
        EventType.CHAT_LIST_UPDATED, [alice.id], {"chat": chats[4].id, "pinned": True, "archived": False}
    )
    outbox.clear()
    with pytest.raises(TooManyPinnedChats):
        pins.member_pin(chat_id=chats[5].id, actor=alice, pinned=True)
    assert outbox.rows == [] and Membership.objects.get(chat=chats[5], user_id=alice.id).pinned_at is None


def test_an_archived_chat_comes_back_with_a_message_unless_muted(group, outbox):
    chat, alice, bob, _ = group

    pins.member_archive(chat_id=chat.id, actor=alice, archived=True)
    assert (listed(alice), listed(alice, archived=True)) == ([], [chat.id])
    message_send(actor=bob, chat_id=chat.id, content="back")
    assert (listed(alice), listed(alice, archived=True)) == ([chat.id], [])

    # archived again, and muted: a message leaves it in the archive
    pins.member_archive(chat_id=chat.id, actor=alice, archived=True)
    member_mute(chat_id=chat.id, actor=alice, until=timezone.now() + timedelta(hours=1))
    message_send(actor=bob, chat_id=chat.id, content="still archived")
    assert (listed(alice), listed(alice, archived=True)) == ([], [chat.id])
    # unmuting brings it back (it has a newer message), and says so
    outbox.clear()
    member_mute(chat_id=chat.id, actor=alice, until=None)
    assert listed(alice) == [chat.id]
    assert [(r.type, r.data) for r in outbox.rows] == [
        (EventType.MUTE_UPDATED, {"chat": chat.id, "muted_until": None, "muted": False}),
        (EventType.CHAT_LIST_UPDATED, {"chat": chat.id, "pinned": False, "archived": False}),
    ]
    # muting a chat that came back does not archive it again
    member_mute(chat_id=chat.id, actor=alice, until=timezone.now() + timedelta(hours=1))
    assert listed(alice) == [chat.id]


def test_archiving_unpins_and_pinning_unarchives(group):
    chat, alice, _, _ = group

    pins.member_pin(chat_id=chat.id, actor=alice, pinned=True)
    archived = pins.member_archive(chat_id=chat.id, actor=alice, archived=True)
    assert shapes.list_data(archived, now=timezone.now()) == {"pinned": False, "archived": True}
    pinned = pins.member_pin(chat_id=chat.id, actor=alice, pinned=True)
    assert shapes.list_data(pinned, now=timezone.now()) == {"pinned": True, "archived": False}


def test_message_pins_by_rank_and_deleting_unpins(group, outbox):
    chat, alice, bob, _ = group
    message, _ = message_send(actor=bob, chat_id=chat.id, content="rules")

    with pytest.raises(NotAllowed):
        pins.message_pin(actor=bob, chat_id=chat.id, message_id=message.id, pinned=True)
    pinned = pins.message_pin(actor=alice, chat_id=chat.id, message_id=message.id, pinned=True)
    assert (pinned.pinned_by_id, pinned.pinned_at is not None) == (alice.id, True)
    deleted = message_update(actor=bob, chat_id=chat.id, message_id=message.id, delete=True)
    assert (deleted.pinned_at, deleted.pinned_by_id) == (None, None)
    assert Message.objects.get(id=message.id).pinned_at is None


def test_a_forward_reuses_the_content_and_the_file_on_both_write_paths(group, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    chat, alice, bob, carol = group
    other, _ = chat_create(actor=bob, member_ids=[carol.id], name="elsewhere")
    image, _ = message_send(actor=alice, chat_id=chat.id, content="look",
                            upload=SimpleUploadedFile("a.gif", GIF, content_type="image/gif"))

    forward, created = message_send(actor=bob, chat_id=other.id, content="", forward_of_id=image.id)

    assert created
    stored = Message.objects.select_related("attachment", "forwarded_from").get(id=forward.id)
    assert (stored.type, stored.content, stored.forwarded, stored.forwarded_from_id) == ("image", "look", True, alice.id)
    assert stored.attachment.file == image.attachment.file and stored.attachment.id != image.attachment.id
    assert shapes.forwarded_from_data(stored) == {"id": alice.id, "username": alice.username, "display_name": ""}
    # a forward of the forward is still from alice
    again, _ = message_send(actor=carol, chat_id=other.id, content="", forward_of_id=forward.id)
    assert Message.objects.get(id=again.id).forwarded_from_id == alice.id
    # deleting the original keeps the file for the forwards
    message_update(actor=alice, chat_id=chat.id, message_id=image.id, delete=True)
    assert (tmp_path / "media" / stored.attachment.file).exists()
    assert Attachment.objects.filter(file=stored.attachment.file).count() == 2


def test_a_forward_of_what_one_cannot_read_is_not_found(group):
    chat, alice, bob, carol = group
    secret, _ = chat_create(actor=alice, member_ids=[carol.id], name="secret")
    hidden, _ = message_send(actor=alice, chat_id=secret.id, content="not for bob")
    gone, _ = message_send(actor=alice, chat_id=chat.id, content="gone")
    message_update(actor=alice, chat_id=chat.id, message_id=gone.id, delete=True)
    left, _ = message_send(actor=alice, chat_id=chat.id, content="before bob left")
    count = Message.objects.count()

    for message_id in (hidden.id, gone.id, 10**12):
        with pytest.raises(MessageNotFound):
            message_send(actor=bob, chat_id=chat.id, content="", forward_of_id=message_id)
    member_remove(chat_id=chat.id, actor=bob, user_id=bob.id)
    mine, _ = chat_create(actor=bob, member_ids=[alice.id])
    with pytest.raises(MessageNotFound):
        message_send(actor=bob, chat_id=mine.id, content="", forward_of_id=left.id)
    assert Message.objects.count() == count


def test_invitations_are_answered_once_each_changeably_never_by_their_author(group, outbox):
    chat, alice, bob, carol = group
    invite, _ = message_send(actor=alice, chat_id=chat.id, content="chess",
                             invite=invite_new(title="chess", url="https://example.org/g"))
    assert Message.objects.get(id=invite.id).invite == {
        "title": "chess", "url": "https://example.org/g", "expires_at": None, "accepted": 0, "declined": 0,
        "answers": [],
    }

    invite_answer(actor=bob, chat_id=chat.id, message_id=invite.id, answer="accept")
    invite_answer(actor=carol, chat_id=chat.id, message_id=invite.id, answer="accept")
    changed = invite_answer(actor=bob, chat_id=chat.id, message_id=invite.id, answer="decline")

    assert (changed.invite["accepted"], changed.invite["declined"]) == (1, 1)
    assert [(a["user"], a["answer"]) for a in changed.invite["answers"]] == [(carol.id, "accept"), (bob.id, "decline")]
    assert InviteAnswer.objects.filter(message_id=invite.id).count() == 2
    with pytest.raises(OwnInvitation):
        invite_answer(actor=alice, chat_id=chat.id, message_id=invite.id, answer="accept")


def test_an_expired_invitation_takes_no_answer(group):
    chat, alice, bob, _ = group
    invite, _ = message_send(actor=alice, chat_id=chat.id, content="chess",
                             invite=invite_new(title="chess", expires_at=timezone.now() + timedelta(seconds=30)))
    Message.objects.filter(id=invite.id).update(invite={**invite.invite, "expires_at": "2020-01-01T00:00:00Z"})

    with pytest.raises(InvitationExpired):
        invite_answer(actor=bob, chat_id=chat.id, message_id=invite.id, answer="accept")
    assert not InviteAnswer.objects.exists()
