from django.db import migrations

# The rate-limit buckets as an UNLOGGED table on PostgreSQL: their upsert is the only
# write of its transaction (it commits on its own, before the message's), and a
# transaction that wrote only unlogged tables commits without waiting for a WAL flush,
# so the send's first fsync goes (measured in the README's "Bench numbers": ~2.6 ms of a
# POST's wall time on this machine's disk).
#
# What it costs: after a crash of PostgreSQL (not a clean restart) the table is empty,
# and it is not on a streaming replica, so a failover empties it too. An empty table is
# every bucket full: each user may send a burst again, each address try its logins
# again, once per crash. The buckets damp abuse over seconds to an hour; they are no
# ledger, and a crash is no one's to trigger at will. Redis (REDIS_URL), the other
# store, keeps them no better.


def unlogged(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE chat_rate_bucket SET UNLOGGED")


def logged(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE chat_rate_bucket SET LOGGED")


class Migration(migrations.Migration):

    dependencies = [
        ('chatserver', '0007_relay_status_broker_up_since'),
    ]

    operations = [
        migrations.RunPython(unlogged, logged),
    ]
