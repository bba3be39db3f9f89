"""The suite runs on the throw-away PostgreSQL cluster, never on SQLite."""

import psycopg
import pytest
from django.db import connection


@pytest.mark.django_db
def test_the_suite_runs_on_postgresql(postgres):
    # when
    with connection.cursor() as cursor:
        cursor.execute("select version(), current_database(), inet_server_port()")
        version, database, port = cursor.fetchone()

    # then
    assert connection.vendor == "postgresql"
    assert version.startswith("PostgreSQL ")
    assert database.startswith("test_chat")
    assert port == postgres.port


@pytest.mark.django_db(transaction=True)
def test_test_database_url_reaches_the_test_database(test_database_url):
    # given: a row committed through Django
    with connection.cursor() as cursor:
        cursor.execute("create table probe (v int)")
        cursor.execute("insert into probe values (42)")

    # when: another process would connect with the URL
    with psycopg.connect(test_database_url) as other:
        rows = other.execute("select v from probe").fetchall()
        other.execute("drop table probe")

    # then
    assert rows == [(42,)]
