"""Prepared statements on Django's connection (chatserver/prepared.py), on a real PostgreSQL."""

import pytest
from django.db import connection, transaction

from chatserver.prepared import prepared_cursor

pytestmark = pytest.mark.django_db(transaction=True)

QUERY = "SELECT %s::int + 41 AS answer_of_test_prepared"


def prepared_here() -> list[str]:
    """The statements prepared on this connection (PostgreSQL's own view of it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s",
                       ["%answer_of_test_prepared%"])
        return [row[0] for row in cursor.fetchall()]


def answer(value: int) -> int:
    with prepared_cursor() as cursor:
        cursor.execute(QUERY, [value])
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's (an ordinary cursor elsewhere)")


def test_a_statement_is_prepared_once_per_connection_and_the_orm_s_are_not():
    # when
    assert [answer(1), answer(2)] == [42, 43]

    # then: one prepared statement, with server-side placeholders; the check's own
    # query (Django's cursor, client-side binding) is not prepared
    assert prepared_here() == ["SELECT $1::int + 41 AS answer_of_test_prepared"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                       ["%pg_prepared_statements%"])
        assert cursor.fetchone()[0] == 0


def test_after_a_rollback_the_statement_is_prepared_again_and_answers():
    # given: prepared, then a transaction on the connection rolled back (a refused request)
    assert answer(1) == 42
    with pytest.raises(ZeroDivisionError):
        with transaction.atomic():
            assert answer(2) == 43
            raise ZeroDivisionError
    # psycopg deallocates the connection's prepared statements after a ROLLBACK
    assert prepared_here() == []

    # when / then: the next use prepares it again, and it answers
    assert answer(3) == 44
    assert prepared_here() == ["SELECT $1::int + 41 AS answer_of_test_prepared"]
