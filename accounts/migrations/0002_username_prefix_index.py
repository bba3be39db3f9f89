"""An index for user search (`lower(username) LIKE 'prefix%'`), on PostgreSQL only.

The unique index on lower(username) serves equality; in a non-C collation a LIKE prefix
search needs the pattern operator class. SQLite has neither the need nor the syntax.
"""

from django.db import migrations

INDEX = "accounts_user_username_prefix_idx"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON accounts_user (lower(username) varchar_pattern_ops)"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(create, drop)]
