"""The upgrade that gives existing chats their typing topic (chats migration 0007)."""

import importlib

import pytest
from django.apps import apps

from chatserver.broker_access import ChatAdd, access_op_from_json
from chatserver.models import OutboxEvent
from tests.support.factories import group_chat, make_user

pytestmark = pytest.mark.django_db

upgrade = importlib.import_module("chats.migrations.0007_typing_topic_grants")


def test_it_queues_a_chat_add_per_chat_in_the_chat_s_own_partition(monkeypatch):
    # given: chats, as an install made before the typing topic has them
    alice, bob, carol = make_user(), make_user(), make_user()
    chats = [group_chat(alice, bob), group_chat(bob, carol), group_chat(carol, alice)]
    OutboxEvent.objects.all().delete()
    monkeypatch.setattr(upgrade, "BATCH", 2)

    # when
    upgrade.queue_grants(apps, None)

    # then: one row per chat, in chat order, sent by the relay of the chat's rows
    rows = list(OutboxEvent.objects.order_by("id"))
    assert [[access_op_from_json(op) for op in r.access] for r in rows] == [[ChatAdd(chat=c)] for c in chats]
    assert [r.partition_key for r in rows] == chats
    assert all((r.payload, r.user_ids, r.chat_id) == ("", [], None) for r in rows)


def test_a_fresh_install_queues_nothing():
    upgrade.queue_grants(apps, None)

    assert OutboxEvent.objects.count() == 0
