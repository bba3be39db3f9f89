"""The message POST's renderer (chatserver/renderers.py): DRF's bytes, rendered by orjson."""

import datetime
import decimal
import uuid

import pytest
from rest_framework.renderers import JSONRenderer

from chatserver.renderers import OrjsonRenderer
from tests.support.factories import group_chat, make_user, send_message

pytestmark = pytest.mark.django_db


def both(data, media_type="application/json"):
    return OrjsonRenderer().render(data, media_type), JSONRenderer().render(data, media_type)


def test_a_sent_message_renders_to_the_same_bytes_as_drf_s_renderer():
    # given: a message as the API answers it (nested objects, nulls, lists, a timestamp,
    # text beyond ASCII)
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    first = send_message(alice, cid, "héllo 👋 «quoted» \"and\" back\\slash")
    response = alice.client.post(f"/chats/{cid}/messages/", {"content": "re: ünïcode", "reply_to": first["id"]},
                                 format="json")
    assert response.status_code == 201

    # when / then: the view's renderer and DRF's agree byte for byte
    ours, drf = both(response.data)
    assert ours == drf
    assert response.content == drf


def test_what_orjson_does_not_know_is_written_as_drf_writes_it():
    data = {
        "at": datetime.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 1, 1),
        "price": decimal.Decimal("1.50"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "nested": [{"n": 1, "ok": True, "none": None}],
    }

    ours, drf = both(data)

    assert ours == drf
    assert b'"2026-01-01T12:00:00.123456Z"' in ours


def test_nothing_renders_to_no_body_and_indented_json_is_drf_s():
    assert OrjsonRenderer().render(None) == b""
    data = {"a": [1, 2]}
    ours, drf = both(data, "application/json; indent=2")
    assert ours == drf and b"\n" in ours
