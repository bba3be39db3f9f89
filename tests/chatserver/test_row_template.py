"""Outbox rows a write statement inserts itself (`outbox.row_template`): the payload, with
the numbers filled in, is the event's JSON byte for byte, or there is no template."""

import json

import psycopg
import pytest

from chatserver import outbox
from chatserver.events import Event, EventType
from chatserver.outbox import InvalidOutboxRow, row_template, slot

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _partial_events(settings):
    # These events carry a few of a message's fields only: the template does not depend on
    # which (a real send's rows are checked against the contract: tests/chats).
    settings.OUTBOX_CHECK_SCHEMAS = False


def created(content: str, **data) -> Event:
    """A message.created of chat 5 whose id, seq, version and unread count are slots 1-4."""
    return Event(
        type=EventType.MESSAGE_CREATED, chat=5, version=slot(3),
        data={"id": slot(1), "chat": 5, "seq": slot(2), "content": content, "version": slot(3),
              "unread_count": slot(4), "mentions": [], **data},
    )


def filled(event: Event, *numbers: int) -> str:
    """The event's JSON as `encode` writes it, with slot n replaced by numbers[n-1]."""
    text = event.encode()
    for n, number in enumerate(numbers, start=1):
        text = text.replace(f":{slot(n)}", f":{number}")
    return text


@pytest.mark.parametrize("content", [
    "hello",
    "100% sure, %s and %1$s and %%",
    '"id":9 and {"seq":1}',
    "ünïcödé 🎉 \\ \n\t",
])
def test_the_payload_filled_in_is_the_event_s_json_byte_for_byte(content, test_database_url):
    # given
    event = created(content)

    # when
    template = row_template(event=event, chat_topic=5, slots=4)

    # then: PostgreSQL's format() gives encode()'s bytes
    expected = filled(event, 101, 7, 12, 1)
    with psycopg.connect(test_database_url) as db:
        (by_postgres,) = db.execute("SELECT format(%s, 101, 7, 12, 1)", [template.payload]).fetchone()
    assert by_postgres == expected
    assert json.loads(expected)["data"]["content"] == content
    assert (template.chat_id, template.partition_key) == (5, 5)


@pytest.mark.parametrize("where", [
    "in a message's words",
    "in a URL",
    "in a list",
])
def test_a_slot_the_statement_could_not_fill_in_means_no_template(where):
    # given: slot 1's digits somewhere else than as a key's value
    if where == "in a message's words":
        event = created(f"my lucky number is {slot(1)}")
    elif where == "in a URL":
        event = created("a file", attachment={"url": f"/chats/5/messages/{slot(1)}/attachment/"})
    else:
        event = created("hi", mentions=[slot(1)])

    # when / then: the caller queues the event itself, once it knows the numbers
    assert row_template(event=event, chat_topic=5, slots=4) is None


def test_a_slot_missing_from_the_event_or_an_event_enqueue_refuses_is_a_bug():
    event = created("hi")

    with pytest.raises(InvalidOutboxRow, match=r"slots \[5\]"):
        row_template(event=event, chat_topic=5, slots=5)
    with pytest.raises(InvalidOutboxRow, match="sent to chat 6's topic"):
        row_template(event=event, chat_topic=6, slots=4)
    with pytest.raises(InvalidOutboxRow, match="ephemeral"):
        row_template(event=Event(type=EventType.TYPING_UPDATED, chat=5, data={"user": 1}), chat_topic=5, slots=0)


def test_slots_are_numbers_no_row_reaches_and_end_in_their_position():
    assert [slot(n) % 10 for n in range(1, 10)] == list(range(1, 10))
    assert slot(9) < 2**63
    assert slot(1) > 2**62
    with pytest.raises(ValueError):
        slot(0)
    with pytest.raises(ValueError):
        outbox.slot(10)
