"""The outbox's wake-up: committing a change notifies a listening relay at once."""

import psycopg
import pytest

from chatserver.outbox import NOTIFY_CHANNEL
from tests.support.factories import make_user


@pytest.mark.django_db(transaction=True)
def test_committing_an_outbox_row_notifies_the_relay_and_rolling_back_does_not(test_database_url):
    from django.db import transaction

    with psycopg.connect(test_database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

        # a rolled-back change: no notification
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                make_user()
                raise RuntimeError("rolled back")
        assert list(listener.notifies(timeout=0.3)) == []

        # a committed one: the relay hears of it
        make_user()
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [n.channel for n in notes] == [NOTIFY_CHANNEL]
