"""Account, device, friend and presence services, called directly (service tier)."""

import os

import pytest
from django.db import connection, transaction

from accounts import deletion, services, social
from accounts.errors import BlockedError, UsernameTaken, WrongPassword
from accounts.models import Device, User
from accounts.presence import presence_apply, presence_apply_many
from chatserver.broker_access import DeviceAdd, DeviceRemove, UserAdd
from chatserver.errors import PermissionDenied
from chatserver.events import EventType
from tests.support.factories import PASSWORD, make_actor

pytestmark = pytest.mark.django_db


def test_the_suite_runs_on_the_database_it_was_asked_for():
    expected = "sqlite" if os.environ.get("TEST_DATABASE") == "sqlite" else "postgresql"
    assert connection.vendor == expected


def test_signup_queues_the_user_and_its_device_for_the_broker_and_no_event(outbox):
    # when
    device, token = services.user_signup(username="ann", password=PASSWORD)

    # then
    (row,) = outbox.rows
    assert row.type is None
    assert row.access == [
        UserAdd(user=device.user_id),
        DeviceAdd(
            user=device.user_id, username=device.mqtt_username, password=device.mqtt_password,
            client_id=device.mqtt_client_id,
        ),
    ]
    assert Device.objects.get(id=device.id).token_hash != token


def test_a_taken_name_in_any_case_queues_nothing(outbox):
    services.user_signup(username="ann", password=PASSWORD)
    outbox.clear()

    with pytest.raises(UsernameTaken):
        services.user_signup(username="ANN", password=PASSWORD)

    assert outbox.rows == []


def test_logout_removes_the_device_on_the_broker(outbox):
    device, _ = services.user_signup(username="ann", password=PASSWORD)
    device_id, expected = device.id, DeviceRemove(
        user=device.user_id, username=device.mqtt_username, client_id=device.mqtt_client_id
    )
    outbox.clear()

    services.device_logout(device=device)

    (row,) = outbox.rows
    assert row.access == [expected]
    assert not Device.objects.filter(id=device_id).exists()


def test_friend_events_tell_each_side_about_the_other(outbox):
    # given
    alice, bob = make_actor(), make_actor()
    outbox.clear()

    # when
    social.friend_request_send(actor=alice, target_id=bob.id)
    social.friend_request_send(actor=bob, target_id=alice.id)

    # then
    told = [(row.type, row.user_ids, row.data["user"]["id"], row.data["by"]) for row in outbox.rows]
    assert told == [
        (EventType.FRIEND_REQUESTED, [bob.id], alice.id, alice.id),
        (EventType.FRIEND_REQUESTED, [alice.id], bob.id, alice.id),
        (EventType.FRIEND_ACCEPTED, [alice.id], bob.id, bob.id),
        (EventType.FRIEND_ACCEPTED, [bob.id], alice.id, bob.id),
    ]


def test_a_block_refuses_friendship_both_ways_and_queues_nothing(outbox):
    alice, bob = make_actor(), make_actor()
    social.block_add(actor=bob, target_id=alice.id)
    outbox.clear()

    for actor, target in ((alice, bob), (bob, alice)):
        with pytest.raises(BlockedError):
            social.friend_request_send(actor=actor, target_id=target.id)

    assert outbox.rows == []


def test_presence_is_told_to_the_user_and_its_friends_once_per_change(outbox):
    # given
    alice, bob, carol = make_actor(), make_actor(), make_actor()
    social.friend_request_send(actor=alice, target_id=bob.id)
    social.friend_request_send(actor=bob, target_id=alice.id)
    outbox.clear()

    # when
    changed = [presence_apply(user_id=alice.id, presence=p) for p in ("online", "online", "away")]

    # then
    assert changed == [True, False, True]
    assert [(row.type, row.user_ids, row.data["presence"]) for row in outbox.rows] == [
        (EventType.PRESENCE_UPDATED, sorted([alice.id, bob.id]), "online"),
        (EventType.PRESENCE_UPDATED, sorted([alice.id, bob.id]), "away"),
    ]
    assert carol.id not in outbox.rows[0].user_ids


def test_a_burst_of_presence_changes_is_applied_at_once_and_only_what_changed_is_told(outbox):
    # given
    alice, bob, carol = make_actor(), make_actor(), make_actor()
    social.friend_request_send(actor=alice, target_id=bob.id)
    social.friend_request_send(actor=bob, target_id=alice.id)
    presence_apply(user_id=carol.id, presence="away")
    outbox.clear()

    # when
    changed = presence_apply_many(changes=[(carol.id, "away"), (bob.id, "online"), (alice.id, "away")])

    # then
    assert sorted(changed) == sorted([alice.id, bob.id])
    told = {row.data["id"]: (row.data["presence"], row.user_ids) for row in outbox.rows}
    assert told == {
        alice.id: ("away", sorted([alice.id, bob.id])),
        bob.id: ("online", sorted([alice.id, bob.id])),
    }
    states = dict(User.objects.filter(id__in=[alice.id, bob.id, carol.id]).values_list("id", "presence"))
    assert states == {alice.id: "away", bob.id: "online", carol.id: "away"}


# --- account management -------------------------------------------------------------------


def _removes(device) -> DeviceRemove:
    return DeviceRemove(user=device.user_id, username=device.mqtt_username, client_id=device.mqtt_client_id)


def test_devices_sign_out_removes_every_device_in_one_row(outbox):
    # given
    phone, _ = services.user_signup(username="ann", password=PASSWORD)
    tablet, _ = services.user_login(username="ann", password=PASSWORD)
    outbox.clear()

    # when
    with transaction.atomic():
        services.devices_sign_out(devices=[phone, tablet])

    # then
    (row,) = outbox.rows
    assert (row.type, row.access) == (None, [_removes(phone), _removes(tablet)])
    assert not Device.objects.filter(user_id=phone.user_id).exists()


def test_a_wrong_current_password_changes_nothing(outbox):
    phone, _ = services.user_signup(username="ann", password=PASSWORD)
    services.user_login(username="ann", password=PASSWORD)
    outbox.clear()

    with pytest.raises(WrongPassword):
        services.user_password_change(
            actor=phone.user, device=phone, current_password="nope", new_password="a new horse battery"
        )

    assert User.objects.get(id=phone.user_id).check_password(PASSWORD)
    assert Device.objects.filter(user_id=phone.user_id).count() == 2
    assert outbox.rows == []


def test_deleting_an_account_queues_its_devices_removal_and_tells_its_friend(outbox):
    # given
    ann, bob = make_actor("ann"), make_actor("bob")
    social.friend_request_send(actor=ann, target_id=bob.id)
    social.friend_request_send(actor=bob, target_id=ann.id)
    (device,) = Device.objects.filter(user=ann)
    outbox.clear()

    # when
    deletion.user_delete(actor=ann, password=PASSWORD)

    # then
    told = [(row.type, row.user_ids, row.access) for row in outbox.rows]
    assert told == [(None, [], [_removes(device)]), (EventType.FRIEND_REMOVED, [bob.id], [])]
    assert outbox.rows[1].data["user"]["deleted"] is True
    ann.refresh_from_db()
    assert (ann.username, ann.is_active, ann.deleted_at is not None) == (f"deleted-{ann.id}", False, True)
    with pytest.raises(UsernameTaken):
        services.user_signup(username="Ann", password=PASSWORD)


def test_deleting_an_account_with_a_wrong_password_changes_nothing(outbox):
    ann = make_actor("ann")
    outbox.clear()

    with pytest.raises(WrongPassword):
        deletion.user_delete(actor=ann, password="nope")

    assert User.objects.get(id=ann.id).is_active
    assert outbox.rows == []


def test_an_operator_deactivation_signs_every_device_out(outbox):
    # given
    operator = User.objects.create_user(username="op", password=PASSWORD, is_staff=True)
    ann = make_actor("ann")
    services.user_login(username="ann", password=PASSWORD)
    devices = list(Device.objects.filter(user=ann).order_by("id"))
    outbox.clear()

    # when
    deletion.user_deactivate(actor=operator, user_id=ann.id)

    # then
    (row,) = outbox.rows
    assert row.access == [_removes(d) for d in devices]
    assert not User.objects.get(id=ann.id).is_active
    assert User.objects.get(id=ann.id).username == "ann"  # deactivated, not deleted


def test_only_operators_deactivate(outbox):
    ann, bob = make_actor(), make_actor()
    outbox.clear()

    with pytest.raises(PermissionDenied):
        deletion.user_deactivate(actor=ann, user_id=bob.id)

    assert User.objects.get(id=bob.id).is_active
    assert outbox.rows == []


def test_deleting_an_account_whose_new_name_an_old_account_holds_still_deletes_it(outbox):
    # given: "deleted-<id>" taken by an account from before the prefix was reserved
    ann = make_actor("ann")
    User.objects.create_user(username=f"deleted-{ann.id}", password=PASSWORD)

    # when
    deletion.user_delete(actor=ann, password=PASSWORD)

    # then
    ann.refresh_from_db()
    assert ann.username.startswith(f"deleted-{ann.id}-") and not ann.is_active
