"""Prepared statements for the few statements of the hot path, on Django's own connection.

PostgreSQL plans a statement every time it receives its text; a prepared one is parsed
and planned once per connection and then only bound and executed. The message send's
statement (`chats.send_sql.SEND`, a data-modifying CTE over five tables) is where that
shows: see the README's "Bench numbers" for PostgreSQL's CPU per POST before and after.

Why not for every statement (Django's `server_side_binding` with psycopg's
`prepare_threshold`): the whole ORM would then bind on the server, and the migrations'
multi-statement SQL fails there ("cannot insert multiple commands into a prepared
statement"). Here only the statements run through `prepared_cursor()` are prepared;
Django's cursors stay client-side bound (psycopg's `ClientCursor` never prepares).

psycopg prepares nothing on a connection whose `prepare_threshold` is None (Django's
default, for connection poolers), whatever `execute(prepare=True)` asks; so the first
call on each connection sets it to PREPARE_THRESHOLD. Only cursors of this module bind on
the server, and they ask for preparation themselves, so no other statement is prepared.
Preparing costs a round trip of its own (Parse), once per statement and connection; and
psycopg forgets the connection's prepared statements after any ROLLBACK on it (a
refused request's transaction: a DEALLOCATE ALL, one round trip, right after it), so the
send after a refusal prepares them again. A pooler in transaction mode before
PostgreSQL (PgBouncer below 1.21, or without `max_prepared_statements`) would break
this: the deployment here talks to PostgreSQL directly (DATABASE_URL).

The cursor is Django's wrapper around psycopg's: `connection.queries`, execute wrappers
and error translation (OperationalError -> Django's, hence a 503 during an outage) work
as for any other cursor.
"""

from __future__ import annotations

from django.db import connection

try:
    import psycopg
except ImportError:  # an SQLite-only installation
    psycopg = None

# Any value but None lets `prepare=True` through; so large that nothing is prepared
# without asking (only this module's cursors bind on the server anyway).
PREPARE_THRESHOLD = 2**31 - 1

if psycopg is not None:
    class PreparedCursor(psycopg.Cursor):
        """A server-side binding cursor whose statements are prepared on first use."""

        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)

        def _send_query_prepared(self, name, pgq, *, binary=None):
            # psycopg keeps the query for Django's debug cursor (`connection.queries`,
            # CaptureQueriesContext: its text, with $n placeholders) on every path but this one.
            self._query = pgq
            super()._send_query_prepared(name, pgq, binary=binary)


def prepared_cursor():
    """A cursor on Django's connection (in its transaction, if any) whose statements
    PostgreSQL prepares once per connection; on another database, an ordinary cursor."""
    if connection.vendor != "postgresql" or psycopg is None:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = PREPARE_THRESHOLD
    with connection.wrap_database_errors:
        return connection._prepare_cursor(PreparedCursor(raw))
