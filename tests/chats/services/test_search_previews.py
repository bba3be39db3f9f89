"""Search and link preview jobs, called directly (service tier; also run on SQLite)."""

import pytest

from chats.models import Message, PreviewJob
from chats.selectors import message_search
from chats.services.chats import chat_create
from chats.services.members import member_remove
from chats.services.message_edit import message_preview_set, message_update
from chats.services.message_send import message_send
from chatserver.events import EventType
from tests.support.factories import make_actor

pytestmark = pytest.mark.django_db

PREVIEW = {"title": "T", "description": "D", "image": None}


@pytest.fixture
def group(outbox):
    alice, bob, carol = make_actor(), make_actor(), make_actor()
    chat, _ = chat_create(actor=alice, member_ids=[bob.id, carol.id], name="g")
    outbox.clear()
    return chat, alice, bob, carol


def test_search_finds_what_a_member_reads_on_both_databases(group):
    chat, alice, bob, carol = group
    first, _ = message_send(actor=alice, chat_id=chat.id, content="Climbing tomorrow")
    second, _ = message_send(actor=bob, chat_id=chat.id, content="climbing 주말에 친구들과")
    gone, _ = message_send(actor=bob, chat_id=chat.id, content="climbing, deleted")
    message_update(chat_id=chat.id, actor=bob, message_id=gone.id, delete=True)

    found, more = message_search(user_id=carol.id, query="climbing")

    assert ([m.id for m in found], more) == ([second.id, first.id], False)
    assert [m.id for m in message_search(user_id=carol.id, query="친구")[0]] == [second.id]
    member_remove(chat_id=chat.id, actor=carol, user_id=carol.id)
    assert message_search(user_id=carol.id, query="climbing") == ([], False)


def test_a_link_queues_one_job_with_the_send_and_its_preview_is_an_update(group, outbox):
    chat, alice, bob, carol = group
    plain, _ = message_send(actor=alice, chat_id=chat.id, content="no link here")
    linked, _ = message_send(actor=alice, chat_id=chat.id, content="see https://example.org/a.")
    outbox.clear()

    assert list(PreviewJob.objects.values_list("message_id", "url")) == [(linked.id, "https://example.org/a")]
    assert message_preview_set(message_id=linked.id, url="https://example.org/a", preview=PREVIEW)
    assert not message_preview_set(message_id=linked.id, url="https://example.org/a", preview=PREVIEW)  # again
    assert not message_preview_set(message_id=plain.id, url="https://example.org/a", preview=PREVIEW)
    (row,) = outbox.rows
    assert row.type == EventType.MESSAGE_UPDATED
    assert row.data["link_preview"] == {"url": "https://example.org/a", **PREVIEW}
    assert Message.objects.get(id=linked.id).link_preview == row.data["link_preview"]


def test_an_edit_to_another_link_drops_the_preview_and_queues_the_new_one(group, outbox):
    chat, alice, bob, carol = group
    message, _ = message_send(actor=alice, chat_id=chat.id, content="https://example.org/a")
    message_preview_set(message_id=message.id, url="https://example.org/a", preview=PREVIEW)
    PreviewJob.objects.all().delete()

    edited = message_update(chat_id=chat.id, actor=alice, message_id=message.id, content="https://example.org/b")

    assert edited.link_preview is None
    assert list(PreviewJob.objects.values_list("url", flat=True)) == ["https://example.org/b"]
    # a job of the old link, done late, changes nothing
    assert not message_preview_set(message_id=message.id, url="https://example.org/a", preview=PREVIEW)
    message_update(chat_id=chat.id, actor=alice, message_id=message.id, delete=True)
    assert not message_preview_set(message_id=message.id, url="https://example.org/b", preview=PREVIEW)
    assert Message.objects.get(id=message.id).link_preview is None
