"""On PostgreSQL, every INSERT into the outbox NOTIFYs the relay by a trigger.

It saves the web worker a round trip per change compared with sending NOTIFY itself.
The notification is delivered at commit, never before, and PostgreSQL folds several of
one transaction into one. SQLite has no NOTIFY: the relay polls there.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION chat_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('chat_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS chat_outbox_notify ON chat_outbox;
CREATE TRIGGER chat_outbox_notify AFTER INSERT ON chat_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION chat_outbox_notify();
"""

DROP = """
DROP TRIGGER IF EXISTS chat_outbox_notify ON chat_outbox;
DROP FUNCTION IF EXISTS chat_outbox_notify();
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("chatserver", "0001_initial")]
    operations = [migrations.RunPython(create, drop)]
