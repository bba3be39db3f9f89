"""Search and link preview jobs, called directly (service tier; also run on SQLite)."""

import importlib
from types import SimpleNamespace

import pytest
from django.db import connection

from chats import shapes
from chats.models import Message, PreviewJob
from chats.selectors import message_search
from chats.services.members import member_remove
from chats.services.message_edit import message_preview_set, message_update
from chats.services.message_send import message_send
from chatserver.events import EventType

pytestmark = pytest.mark.django_db

PREVIEW = {"title": "T", "description": "D", "image": None}


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


def found(user, query, **params):
    return [m.id for m in message_search(user_id=user.id, query=query, **params)[0]]


def test_words_match_as_prefixes_and_spaceless_scripts_inside_words_on_both_databases(group):
    # given
    chat, alice, bob, carol = group
    ko = message_send(actor=alice, chat_id=chat.id, content="주말에 친구들과 등산 갈래요?")[0]
    fr = message_send(actor=bob, chat_id=chat.id, content="On se retrouve à l'Été Café, d'accord ?")[0]
    en = message_send(actor=carol, chat_id=chat.id, content="Climbing chats: bring the ropes")[0]
    ja = message_send(actor=alice, chat_id=chat.id, content="私は東京Towerに住んでいます")[0]
    inside = message_send(actor=alice, chat_id=chat.id, content="여자친구랑 영화 봤어")[0]
    th = message_send(actor=alice, chat_id=chat.id, content="สวัสดีครับ เพื่อน")[0]
    message_send(actor=alice, chat_id=chat.id, content="nothing to see")

    # then: words, as prefixes, case folded, diacritics kept (PostgreSQL's 'simple')
    assert found(bob, "été") == [fr.id]
    assert found(bob, "ÉTÉ café") == [fr.id]
    assert found(bob, "ete") == []
    assert found(bob, "chat") == [en.id]
    assert found(bob, "ropes bring") == [en.id]
    assert found(bob, "ropes xyz") == []  # every word
    assert found(bob, "limbing") == []  # inside a word: not in spaced scripts
    assert found(bob, "c") == [en.id, fr.id]  # newest first
    # spaceless scripts: inside words too, 2 characters (LIKE) and 3 or more (trigrams)
    assert found(bob, "친구") == [inside.id, ko.id]
    assert found(bob, "자친구") == [inside.id]
    assert found(bob, "東京") == [ja.id]
    assert found(bob, "東京tower に") == []  # the phrase as typed, spaces included
    assert found(bob, "東京tower") == [ja.id]
    assert found(bob, "등산 갈래요") == [ko.id]
    assert found(bob, "สวัสดี") == [th.id]  # Thai (U+0E00-0E7F), a spaceless script too
    # paging as on PostgreSQL
    assert message_search(user_id=bob.id, query="친구", limit=1) == ([inside], True)
    assert found(bob, "친구", before=inside.id) == [ko.id]


@pytest.mark.parametrize("query", [
    '"', "*", '"*', "AND", "OR", "NOT", "NEAR(", "NEAR(climbing rope, 2)", "climbing)", "(", "^", "-",
    "content:climbing", "{content}: x", "climbing\"", "'", "%", "_", "\\", '東京"*', "東京 AND 京都", '東"',
])
def test_fts5_and_like_syntax_in_a_query_is_text_and_never_an_error(group, query):
    chat, alice, bob, carol = group
    message_send(actor=alice, chat_id=chat.id, content="東京 walls, 100% rope_ish")

    message_search(user_id=bob.id, query=query)  # no error


def test_query_syntax_characters_are_searched_as_text(group):
    # given
    chat, alice, bob, carol = group
    message = message_send(actor=alice, chat_id=chat.id, content='Climbing AND rope NEAR the "wall"*')[0]
    message_send(actor=alice, chat_id=chat.id, content="climbing alone")

    # then: the words of the query, whatever surrounds them
    assert found(bob, '"climbing" AND* NEAR( rope)') == [message.id]
    assert found(bob, 'wall"*') == [message.id]
    assert found(bob, "near OR xyz") == []  # OR is a word like any other
    assert found(bob, "content:rope") == []  # not a column filter: "content" is a word
    assert found(bob, "-rope") == [message.id]
    assert found(bob, "climbing ___") == [found(bob, "climbing")[0], message.id]  # `_` is no word
    assert found(bob, '"*') == []


def test_an_edit_changes_what_matches_and_a_deleted_message_matches_nothing(group):
    # given
    chat, alice, bob, carol = group
    edited = message_send(actor=alice, chat_id=chat.id, content="meeting at 여자친구랑 cafe")[0]
    gone = message_send(actor=alice, chat_id=chat.id, content="secret climbing 東京")[0]

    # when
    message_update(chat_id=chat.id, actor=alice, message_id=edited.id, content="lunch at 남자친구랑 bistro")
    message_update(chat_id=chat.id, actor=alice, message_id=gone.id, delete=True)

    # then
    assert [found(bob, q) for q in ("meeting", "cafe", "여자친", "여자친구랑")] == [[], [], [], []]
    assert [found(bob, q) for q in ("lunch", "bistro", "남자친", "자친구")] == [[edited.id]] * 4
    assert [found(bob, q) for q in ("secret", "climbing", "東京")] == [[], [], []]
    assert found(bob, shapes.DELETED_CONTENT) == []


def test_on_sqlite_the_fts5_tables_follow_every_write(group):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's FTS5 tables (PostgreSQL indexes an expression)")
    # given
    chat, alice, bob, carol = group
    kept = message_send(actor=alice, chat_id=chat.id, content="rope one")[0]
    message_send(actor=alice, chat_id=chat.id, content="rope two")
    message_update(chat_id=chat.id, actor=alice, message_id=kept.id, content="rope edited")
    Message.objects.filter(id=kept.id).update(reactions=[])  # not the text: no re-index

    # when
    Message.objects.exclude(id=kept.id).delete()

    # then: both tables hold exactly what chats_message holds (rank 1: checked against
    # the content table; an index out of step is "database disk image is malformed")
    with connection.cursor() as cursor:
        for table in ("chats_message_fts", "chats_message_trgm"):
            cursor.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)")
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'chats_message'")
        assert sorted(row[0] for row in cursor.fetchall()) == [
            "chats_message_search_delete", "chats_message_search_insert", "chats_message_search_update",
        ]
    assert found(bob, "rope") == [kept.id]


def test_on_sqlite_the_migration_indexes_the_messages_already_there_and_reverses(group):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's FTS5 tables (PostgreSQL indexes an expression)")
    # given: the migration reversed, and messages sent without the tables
    migration = importlib.import_module("chats.migrations.0006_sqlite_fts5")
    editor = SimpleNamespace(connection=connection, execute=lambda sql: connection.cursor().execute(sql))
    chat, alice, bob, carol = group
    migration.drop(None, editor)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'chats_message_fts%' OR name LIKE "
                       "'chats_message_trgm%' OR name LIKE 'chats_message_search_%'")
        assert cursor.fetchone() == (0,)
    old = message_send(actor=alice, chat_id=chat.id, content="rope from before 여자친구랑")[0]

    # when
    migration.create(None, editor)
    migration.create(None, editor)  # again (after a migration that rebuilt the table): harmless

    # then
    new = message_send(actor=alice, chat_id=chat.id, content="rope from after")[0]
    assert (found(bob, "rope"), found(bob, "자친구")) == ([new.id, old.id], [old.id])
    with connection.cursor() as cursor:
        for table in ("chats_message_fts", "chats_message_trgm"):
            cursor.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)")


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
