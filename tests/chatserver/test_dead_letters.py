"""Dead letters: rows the relay cannot handle are set aside, and everything else flows on.

End to end against the real relay process, Mosquitto and PostgreSQL (rows written
straight into the outbox, as a buggy service or a hand-edited row would); then the
`outbox_dead_letters` command.
"""

import json
import secrets

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from chatserver.broker_access import DeviceRemove, MemberGrant, UserAdd
from chatserver.models import DeadLetter, OutboxEvent
from chatserver.relay import Relay
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until
from tests.support.stack import call

USER = 900_000_001  # no such user: the relay does not care, the topic is what counts
TOPIC = f"chat/users/{USER}"
TOO_LARGE = 300 * 1024


def observer(broker) -> MqttProbe:
    """A server-side listener (the admin account may subscribe to anything)."""
    probe = MqttProbe(broker.host, broker.port)
    assert probe.connect(broker.admin_username, broker.admin_password, f"test-observer-{secrets.token_hex(4)}",
                         clean_session=True) == 0
    assert probe.subscribe(TOPIC) == 1
    return probe


def row(payload: str = "", *, user_ids=(USER,), access=()) -> OutboxEvent:
    return OutboxEvent(payload=payload, user_ids=list(user_ids), access=list(access))


# --- translation (no I/O) -----------------------------------------------------------------


def test_a_row_translates_into_its_commands_then_its_publishes_in_order():
    # given
    op = DeviceRemove(user=5, username="u5-1", client_id="chat-5-1")
    good = OutboxEvent(id=1, payload='{"n": 1}', user_ids=[5, 6], chat_id=7, access=[op.to_json()])

    # when
    commands, publishes = Relay().translate(good)

    # then
    assert commands == [
        {"command": "deleteClient", "username": "u5-1"},
        {"command": "deleteRole", "rolename": "device-u5-1"},
    ]
    assert publishes == [
        ("chat/presence/5/chat-5-1", b"", True),
        ("chat/users/5", b'{"n": 1}', False),
        ("chat/users/6", b'{"n": 1}', False),
        ("chat/chats/7", b'{"n": 1}', False),
    ]


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"access": [{"op": "teleport"}]}, "unknown access operation: 'teleport'"),
        ({"access": [{"op": "user_add", "user": 0}]}, "user_add.user: an id must be a positive integer, got 0"),
        ({"access": [{"op": "user_add", "user": 5, "extra": 1}]}, "user_add: "),
        ({"access": {"op": "user_add", "user": 5}}, "access must be a list"),
        ({"payload": "{}", "user_ids": [5, True]}, "an id must be a positive integer, got True"),
        ({"payload": "{}", "user_ids": 5}, "user_ids must be a list, got 5"),
        ({"payload": "{}", "chat_id": -1}, "an id must be a positive integer, got -1"),
    ],
)
def test_a_row_the_relay_cannot_handle_fails_translation_with_its_reason(fields, error):
    bad = OutboxEvent(id=1, **fields)

    with pytest.raises(ValueError) as raised:
        Relay().translate(bad)

    assert error in str(raised.value)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_poison_rows_are_set_aside_with_their_error_and_the_rows_around_them_are_delivered(live_stack, broker,
                                                                                            broker_kind):
    # given
    probe = observer(broker)
    big = "x" * TOO_LARGE
    try:
        # when: one transaction, so one batch: good rows between rows that cannot work
        with transaction.atomic():
            rows = OutboxEvent.objects.bulk_create([
                row('{"n": 1}'),
                row('{"n": "unknown op"}', access=[{"op": "teleport", "user": USER}]),
                row('{"n": 2}'),
                row('{"n": "bad user id"}', user_ids=[USER, "eve"]),
                row('{"n": 3}'),
                row(big),
                row(access=[MemberGrant(chat=USER, user=USER).to_json()], user_ids=[]),
                row('{"n": 4}', access=[UserAdd(user=USER).to_json()]),
            ])
        ids = [r.id for r in rows]

        # then: the good rows arrive, in order, and nothing of a bad one
        wait_until(lambda: len(probe.messages_on(TOPIC)) >= 4, 15, "the four good rows")
        assert [json.loads(p)["n"] for p in probe.messages_on(TOPIC)] == [1, 2, 3, 4]
    finally:
        probe.close()
    wait_until(lambda: not OutboxEvent.objects.exists(), 10, "the outbox drained")
    letters = list(DeadLetter.objects.order_by("id").values("outbox_id", "error", "payload", "user_ids"))
    assert letters == [
        {"outbox_id": ids[1], "payload": '{"n": "unknown op"}', "user_ids": [USER],
         "error": "cannot translate: ValueError: unknown access operation: 'teleport'"},
        {"outbox_id": ids[3], "payload": '{"n": "bad user id"}', "user_ids": [USER, "eve"],
         "error": "cannot translate: ValueError: an id must be a positive integer, got 'eve'"},
        {"outbox_id": ids[5], "payload": big, "user_ids": [USER],
         "error": f"broker refused: publish to {TOPIC}: payload too large ({TOO_LARGE} > {256 * 1024} bytes)"},
    ] + ([
        # A grant before its user exists is Mosquitto's refusal (dynamic security has no
        # group for it); on RabbitMQ a grant is nothing to apply (Django decides at
        # SUBSCRIBE from the database), so that row is no poison there.
        {"outbox_id": ids[6], "payload": "", "user_ids": [],
         "error": "broker refused: addGroupRole: Group not found"},
    ] if broker_kind == "mosquitto" else [])
    status, body = call(f"{live_stack.url}/health/")
    assert (status, body["dead_letters"], body["outbox_pending"], body["relay"]) == (200, len(letters), 0, "running")
    assert live_stack.relay.alive()


# --- the command --------------------------------------------------------------------------


def letter(n: int, error: str = "cannot translate: ValueError: boom") -> DeadLetter:
    return DeadLetter.objects.create(
        outbox_id=1000 + n, created_at=timezone.now(), payload=json.dumps({"n": n}), user_ids=[USER],
        chat_id=7, access=[UserAdd(user=USER).to_json()], error=error,
    )


@pytest.mark.django_db
def test_the_command_lists_dead_letters_with_their_error_and_a_short_payload(capsys):
    # given
    first = letter(1, "broker refused: publish to chat/users/5: payload too large")
    long = DeadLetter.objects.create(outbox_id=77, created_at=timezone.now(), payload="y" * 500, error="bad")

    # when
    call_command("outbox_dead_letters")

    # then
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{first.id}\t{first.failed_at.isoformat()}\toutbox #1001\t"
        'broker refused: publish to chat/users/5: payload too large\t{"n": 1}',
        f"{long.id}\t{long.failed_at.isoformat()}\toutbox #77\tbad\t{'y' * 60}...",
    ]


@pytest.mark.django_db
def test_replay_moves_dead_letters_to_the_end_of_the_outbox_in_their_order(capsys):
    # given: something queued meanwhile, and three dead letters
    queued = OutboxEvent.objects.create(payload="{}", user_ids=[USER])
    one, two, three = letter(1), letter(2), letter(3)

    # when
    call_command("outbox_dead_letters", "--replay", str(three.id), str(one.id))

    # then: behind the queued row, in dead-letter order, as they were
    replayed = list(OutboxEvent.objects.order_by("id"))
    assert [r.id for r in replayed][0] == queued.id
    assert [(r.payload, r.user_ids, r.chat_id, r.access, r.created_at) for r in replayed[1:]] == [
        (one.payload, one.user_ids, one.chat_id, one.access, one.created_at),
        (three.payload, three.user_ids, three.chat_id, three.access, three.created_at),
    ]
    assert list(DeadLetter.objects.values_list("id", flat=True)) == [two.id]
    assert capsys.readouterr().out == f"replayed 2: outbox ids {replayed[1].id}, {replayed[2].id}\n"


@pytest.mark.django_db
def test_replay_all_empties_the_dead_letters():
    letter(1), letter(2)

    call_command("outbox_dead_letters", "--replay-all")

    assert [r.payload for r in OutboxEvent.objects.order_by("id")] == ['{"n": 1}', '{"n": 2}']
    assert DeadLetter.objects.count() == 0


@pytest.mark.django_db
def test_discard_deletes_only_the_ones_named(capsys):
    one, two = letter(1), letter(2)

    call_command("outbox_dead_letters", "--discard", str(one.id))

    assert list(DeadLetter.objects.values_list("id", flat=True)) == [two.id]
    assert OutboxEvent.objects.count() == 0
    assert capsys.readouterr().out == "discarded 1\n"


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["--replay", "--discard"])
def test_an_unknown_id_changes_nothing(action):
    one = letter(1)

    with pytest.raises(CommandError, match=f"no dead letter with id {one.id + 1}"):
        call_command("outbox_dead_letters", action, str(one.id), str(one.id + 1))

    assert list(DeadLetter.objects.values_list("id", flat=True)) == [one.id]
    assert OutboxEvent.objects.count() == 0
