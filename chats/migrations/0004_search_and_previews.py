"""Search and link previews.

Search (PostgreSQL only; SQLite searches with LIKE, see chats/search.py and the README):
- a GIN index on `to_tsvector('simple', content)`: an expression index rather than a
  stored tsvector column (the same lookups, no column to keep in step, no wider rows);
- the pg_trgm extension and a GIN trigram index on `content`, for text in scripts
  written without spaces (substring matches, `ILIKE '%...%'`).
`CREATE EXTENSION IF NOT EXISTS pg_trgm` needs, when the extension is not there yet, a
superuser or (PostgreSQL 13+, where pg_trgm is a trusted extension) a role with CREATE
on the database, which the database's owner has. Debian ships it in `postgresql`
(contrib). Without either, ask an administrator to run that statement once, then migrate.

Link previews: a trigger NOTIFYs `chat_previews` at commit of every insert into the
job table, as the outbox's and the push jobs' do.
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


POSTGRES_CREATE = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS chats_message_search_idx ON chats_message
    USING gin (to_tsvector('simple', content));
CREATE INDEX IF NOT EXISTS chats_message_trgm_idx ON chats_message
    USING gin (content gin_trgm_ops);

CREATE OR REPLACE FUNCTION chats_preview_job_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('chat_previews', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS chats_preview_job_notify ON chats_preview_job;
CREATE TRIGGER chats_preview_job_notify AFTER INSERT ON chats_preview_job
    FOR EACH STATEMENT EXECUTE FUNCTION chats_preview_job_notify();
"""

# The extension stays: other databases' objects may use it.
POSTGRES_DROP = """
DROP TRIGGER IF EXISTS chats_preview_job_notify ON chats_preview_job;
DROP FUNCTION IF EXISTS chats_preview_job_notify();
DROP INDEX IF EXISTS chats_message_trgm_idx;
DROP INDEX IF EXISTS chats_message_search_idx;
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_DROP)


class Migration(migrations.Migration):

    dependencies = [
        ('chats', '0003_reactions_and_mentions'),
    ]

    operations = [
        migrations.CreateModel(
            name='LinkPreview',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('url', models.CharField(max_length=2000, unique=True)),
                ('data', models.JSONField(blank=True, null=True)),
                ('fetched_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
        migrations.AddField(
            model_name='message',
            name='link_preview',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='PreviewJob',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('url', models.CharField(max_length=2000)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('message', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='chats.message')),
            ],
            options={
                'db_table': 'chats_preview_job',
            },
        ),
        migrations.RunPython(create, drop),
    ]
