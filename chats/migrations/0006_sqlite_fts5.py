"""Search on SQLite: FTS5 tables over `chats_message.content` (SQLite only; PostgreSQL's
indexes are migration 0004's).

- `chats_message_fts`, tokenizer `unicode61 remove_diacritics 0`: words, for prefix
  queries (`"word"*`). Case-folded, diacritics kept, as PostgreSQL's 'simple'
  configuration does (`été` finds `l'Été`, `ete` does not, on both databases);
- `chats_message_trgm`, tokenizer `trigram` (SQLite 3.34+): substrings of 3 characters
  or more, for text in scripts written without spaces, as the pg_trgm index does.

Both are external-content tables (`content='chats_message'`: no second copy of the
text), kept in step by triggers on insert, on an update that changes `content`, and on
delete, so every writer (the ORM, chats/send_sql.py, a cascade) keeps them right; rows
already there are indexed here ('rebuild'). Why these two and not one, with the
measurements: chats/search.py.

A later migration after which Django rebuilds `chats_message` on SQLite (it copies the
table for most column changes, and the old table's triggers go with it) calls `create`
again: it makes what is missing and rebuilds both indexes.
"""

import sqlite3

from django.db import migrations

TABLES = {
    "chats_message_fts": "unicode61 remove_diacritics 0",
    "chats_message_trgm": "trigram",
}


def _statements() -> list[str]:
    create = [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5("
        f"content, content='chats_message', content_rowid='id', tokenize='{tokenizer}')"
        for name, tokenizer in TABLES.items()
    ]
    add = "".join(f"INSERT INTO {t}(rowid, content) VALUES (new.id, new.content); " for t in TABLES)
    remove = "".join(f"INSERT INTO {t}({t}, rowid, content) VALUES ('delete', old.id, old.content); " for t in TABLES)
    triggers = [
        f"CREATE TRIGGER IF NOT EXISTS chats_message_search_insert AFTER INSERT ON chats_message BEGIN {add}END",
        f"CREATE TRIGGER IF NOT EXISTS chats_message_search_delete AFTER DELETE ON chats_message BEGIN {remove}END",
        # Only when the text changes: a reaction, a pin or a preview leaves the index alone.
        "CREATE TRIGGER IF NOT EXISTS chats_message_search_update AFTER UPDATE OF content ON chats_message "
        f"WHEN old.content IS NOT new.content BEGIN {remove}{add}END",
    ]
    rebuild = [f"INSERT INTO {t}({t}) VALUES ('rebuild')" for t in TABLES]
    return create + triggers + rebuild


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        if sqlite3.sqlite_version_info < (3, 34, 0):
            raise RuntimeError(
                f"Search on SQLite needs SQLite 3.34 or later (FTS5's trigram tokenizer); this "
                f"Python's is {sqlite3.sqlite_version}. Use a newer one, or PostgreSQL (DATABASE_URL)."
            )
        # One statement a call: Python's sqlite3 runs no more.
        for statement in _statements():
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for trigger in ("insert", "delete", "update"):
            schema_editor.execute(f"DROP TRIGGER IF EXISTS chats_message_search_{trigger}")
        for name in TABLES:
            schema_editor.execute(f"DROP TABLE IF EXISTS {name}")


class Migration(migrations.Migration):

    dependencies = [
        ('chats', '0005_pins_forwards_invites'),
    ]

    operations = [
        migrations.RunPython(create, drop),
    ]
