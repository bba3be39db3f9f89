"""Every event type walked against the versioning rule of `chats.services.common`.

A chat's `version` counts its changes without gaps; /chats/sync/ replays what came after
the version a client has. So every chat event either takes the chat's next version (and
nothing else does), or is listed in UNVERSIONED / UNVERSIONED_WHEN with its reason.
"""

from collections import defaultdict

import pytest

from accounts import services as account_services
from accounts import social
from accounts.presence import presence_apply
from chats.models import MUTED_FOREVER, Chat
from chats.services import chats as chat_services
from chats.services import members as member_services
from chats.services.common import UNVERSIONED, UNVERSIONED_WHEN, bumps_version
from chats.services.message_edit import message_update
from chats.services.message_send import message_send
from chats.services.pointers import pointer_move
from chats.services.reactions import reaction_add, reaction_remove
from chats.invites import invite_new
from chats.services import pins as pin_services
from chats.services.invites import invite_answer
from chatserver.events import EventType
from tests.support.factories import make_actor

pytestmark = pytest.mark.django_db


def every_event(outbox) -> list:
    """Make each kind of change once, through the services; return what they queued."""
    alice, bob, carol = make_actor(), make_actor(), make_actor()
    outbox.clear()
    group, _ = chat_services.chat_create(actor=alice, member_ids=[bob.id], name="g")
    chat_services.chat_rename(chat_id=group.id, actor=alice, name="g2")
    sent, _ = message_send(actor=bob, chat_id=group.id, content="hi")
    message_update(actor=bob, chat_id=group.id, message_id=sent.id, content="hi!")
    reaction_add(actor=alice, chat_id=group.id, message_id=sent.id, emoji="👍")
    reaction_remove(actor=alice, chat_id=group.id, message_id=sent.id, emoji="👍")
    member_services.member_add(chat_id=group.id, actor=alice, user_id=carol.id)
    member_services.member_set_role(chat_id=group.id, actor=alice, user_id=carol.id, role="admin")
    pointer_move(actor=alice, chat_id=group.id, message_id=sent.id, read=True)
    member_services.member_mute(chat_id=group.id, actor=bob, until=MUTED_FOREVER)
    # pins, forwards, invitations
    pin_services.member_pin(chat_id=group.id, actor=bob, pinned=True)
    pin_services.member_archive(chat_id=group.id, actor=bob, archived=True)
    pin_services.message_pin(actor=alice, chat_id=group.id, message_id=sent.id, pinned=True)
    message_send(actor=alice, chat_id=group.id, content="", forward_of_id=sent.id)
    invite, _ = message_send(actor=alice, chat_id=group.id, content="chess", invite=invite_new(title="chess"))
    invite_answer(actor=bob, chat_id=group.id, message_id=invite.id, answer="accept")
    member_services.member_remove(chat_id=group.id, actor=alice, user_id=bob.id)
    direct, _ = chat_services.chat_create(actor=alice, member_ids=[carol.id])
    message_send(actor=carol, chat_id=direct.id, content="psst")
    chat_services.chat_delete(chat_id=direct.id, actor=alice)  # hides it, for alice only
    chat_services.chat_delete(chat_id=group.id, actor=alice)
    social.friend_request_send(actor=alice, target_id=bob.id)
    social.friend_request_send(actor=bob, target_id=alice.id)
    social.friend_remove(actor=alice, target_id=bob.id)
    presence_apply(user_id=alice.id, presence="online")
    account_services.user_settings_update(actor=alice, display_name="Alice")
    return [row for row in outbox.rows if row.type is not None]


def test_every_event_type_is_walked(outbox):
    # all but the ephemeral ones, which never go through the outbox
    assert {row.type for row in every_event(outbox)} == {t for t in EventType if not t.is_ephemeral}


def test_chat_events_take_the_next_version_unless_listed_and_others_never_do(outbox):
    # given
    rows = every_event(outbox)
    versions = defaultdict(list)

    # then
    for row in rows:
        if not row.type.is_chat_event:
            assert (row.chat, row.version) == (None, None), row
        elif bumps_version(row.type, row.data):
            versions[row.chat].append(row.version)
        else:
            assert row.version is None, row
    for chat_id, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), (chat_id, seen)
    (direct,) = Chat.objects.filter(kind=Chat.Kind.DIRECT)
    # The hide changed nothing for the other member: the version counts chat.created and
    # the message only.
    assert direct.version == len(versions[direct.id]) == 2


def test_every_exception_to_the_rule_says_why():
    assert all(reason.strip() for reason in UNVERSIONED.values())
    assert all(reason.strip() for reason in UNVERSIONED_WHEN.values())
    assert all(t.is_chat_event for t in UNVERSIONED)
    assert all(t.is_chat_event for t, _ in UNVERSIONED_WHEN)
