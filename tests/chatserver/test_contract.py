"""The contract: docs/asyncapi.yaml (MQTT) and the OpenAPI schema (HTTP) against the code.

How events are held to docs/asyncapi.yaml across the whole suite:
- queued: `chatserver.outbox.enqueue` checks every event (OUTBOX_CHECK_SCHEMAS, on in
  tests/settings.py, which the relay and granian processes use too: tests/support/stack.py);
- received: every server event an `MqttProbe` receives on a user or chat topic is
  checked on arrival (tests/support/mqtt.py), and a mismatch fails the test;
- the simulator's `listen --json` output is checked in tests/simulator/test_simulator.py.

Which test makes each event type (through the real services), here:
- all 13 types, in one process: `test_the_services_make_every_event_type_and_each_matches_its_schema`
  (with both `chat.deleted` variants, `member.updated` by nobody, replies and an image);
- all 13 types, received over MQTT from the relay by a phone:
  `test_a_phone_receives_every_event_type_over_mqtt_and_each_matches_its_schema`.
Elsewhere (measured: each of these tests makes, and checks, events of that type):
- message.created: chats/test_chats.py::test_messages_get_seq_1_2_3_and_an_event_for_every_member
  (and chatserver/test_delivery.py, chats/test_media.py, chats/test_lifecycle.py, chats/test_races.py, chatserver/test_stack.py);
- message.updated: chats/test_lifecycle.py::test_the_author_edits_and_members_get_message_updated,
  ::test_soft_delete_keeps_the_row_and_replaces_the_content;
- chat.created: chats/test_chats.py::test_group_creator_is_owner_and_others_members (and most
  chat tests);
- chat.updated: chats/test_members.py::test_admin_renames_and_only_owner_deletes;
- chat.deleted: the same (deleted), accounts/test_social.py::test_hiding_a_direct_chat_hides_it_until_the_next_message
  (hidden);
- member.added: chats/test_members.py::test_admin_adds_a_member_whose_pointer_starts_at_the_newest_message;
- member.removed: chats/test_members.py::test_kick_removes_and_revokes_before_telling;
- member.updated: chats/test_members.py::test_owner_leaving_passes_ownership_to_the_longest_standing_admin;
- read.updated: chats/test_lifecycle.py::test_read_pointer_moves_forward_only_and_drives_unread_counts;
- friend.requested, friend.accepted: accounts/test_social.py::test_request_then_accept_makes_friends_and_tells_both;
- friend.removed: accounts/test_social.py::test_delete_unfriends_cancels_or_declines;
- presence.updated: accounts/test_presence.py::test_friends_see_a_device_come_and_its_last_will_go_and_others_see_nothing
  (made in the relay process, received by probes).
"""

import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.db import transaction
from jsonschema import Draft7Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from rest_framework.test import APIClient

from accounts import presence as account_presence
from accounts import social
from chats.services.common import UNVERSIONED, UNVERSIONED_WHEN
from chats.services.message_edit import message_preview_set
from chatserver import contract, outbox
from chatserver.events import Event, EventType
from chatserver.models import OutboxEvent
from tests.support.factories import PASSWORD, make_user
from tests.support.mqtt import MqttProbe
from tests.support.stack import NoBroker, server_env, wait_until

ALL_TYPES = {t.value for t in EventType}
# What the services queue: all but the ephemeral ones (presence.probe, which the presence
# worker publishes itself; tests/accounts/test_presence.py receives it and checks it; and
# typing.updated, which the relay publishes from a NOTIFY: tests/chats/test_typing.py).
QUEUED_TYPES = {t.value for t in EventType if not t.is_ephemeral}
# On the chat's typing topic only.
TYPING_TOPIC_ONLY = {EventType.TYPING_UPDATED.value}


def png(width=40, height=30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def refs_in(node, path="#"):
    """Every `$ref` in a document: (where, ref)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield path, value
            else:
                yield from refs_in(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from refs_in(value, f"{path}/{i}")


def object_schemas(node, path="#/components/schemas"):
    """Every schema with `properties` under a node: (where, schema)."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict) and node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            if key not in ("examples", "example", "enum", "const"):
                yield from object_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from object_schemas(value, f"{path}/{i}")


# --- the AsyncAPI document --------------------------------------------------------------


def test_the_document_is_asyncapi_3_and_every_ref_resolves():
    doc = contract.document()

    assert doc["asyncapi"] == "3.0.0"
    assert {"title", "version", "description"} <= set(doc["info"])
    assert doc["defaultContentType"] == "application/json"
    assert set(doc) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components"}
    unresolved = []
    for where, ref in refs_in(doc):
        try:
            contract.resolve(ref)
        except (KeyError, IndexError, ValueError):
            unresolved.append((where, ref))
    assert unresolved == []


def test_servers_are_mqtt_and_websockets_with_the_dynsec_password_scheme():
    doc = contract.document()

    assert {name: server["protocol"] for name, server in doc["servers"].items()} == {"mqtt": "mqtt", "ws": "ws"}
    for server in doc["servers"].values():
        assert server["host"] == "{host}:{port}"
        assert set(server["variables"]) == {"host", "port"}
        assert [contract.resolve(s["$ref"])["type"] for s in server["security"]] == ["userPassword"]
        binding = server["bindings"]["mqtt"]
        assert binding["cleanSession"] is False
        assert binding["lastWill"] == {
            "topic": "chat/presence/{userId}/{clientId}", "qos": 1, "message": "offline", "retain": True,
        }


def test_channels_operations_and_messages_are_consistent():
    doc = contract.document()
    channels, operations = doc["channels"], doc["operations"]

    assert {c["address"] for c in channels.values()} == {
        "chat/users/{userId}", "chat/chats/{chatId}", "chat/chats/{chatId}/typing",
        "chat/presence/{userId}/{clientId}",
    }
    for name, channel in channels.items():
        # every placeholder of the address is a parameter, and nothing else is
        assert set(re.findall(r"{(\w+)}", channel["address"])) == set(channel["parameters"]), name
        for key, ref in channel["messages"].items():
            assert ref["$ref"].startswith("#/components/messages/"), (name, key)
    used_messages = {ref["$ref"] for c in channels.values() for ref in c["messages"].values()}
    assert used_messages == {f"#/components/messages/{m}" for m in doc["components"]["messages"]}
    for name, operation in operations.items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        channel_name = channel_ref.removeprefix("#/channels/")
        assert channel_name in channels, name
        # an operation's messages are messages of its own channel
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(f"{channel_ref}/messages/"), (name, ref)
    # every schema is used, so none is a stale leftover
    referenced = {ref for _, ref in refs_in(doc)}
    unused = [n for n in doc["components"]["schemas"] if f"#/components/schemas/{n}" not in referenced]
    assert unused == []


def test_the_server_sends_events_at_qos_1_unretained_and_receives_retained_presence():
    operations = contract.document()["operations"]

    summary = {
        name: (op["action"], op["channel"]["$ref"], op["bindings"]["mqtt"]["qos"], op["bindings"]["mqtt"]["retain"])
        for name, op in operations.items()
    }
    assert summary == {
        "sendUserEvents": ("send", "#/channels/userTopic", 1, False),
        "probePresence": ("send", "#/channels/userTopic", 0, False),
        "sendChatEvents": ("send", "#/channels/chatTopic", 1, False),
        "sendTyping": ("send", "#/channels/typingTopic", 0, False),
        "receivePresence": ("receive", "#/channels/presenceTopic", 1, True),
        "clearPresence": ("send", "#/channels/presenceTopic", 1, True),
    }
    # the event operations carry every message of their channel: queued ones at QoS 1,
    # the ephemeral one at QoS 0
    channels = contract.document()["channels"]

    def names(operation):
        return {
            channels[operation["channel"]["$ref"].removeprefix("#/channels/")]["messages"][
                ref["$ref"].rsplit("/", 1)[1]
            ]["$ref"].rsplit("/", 1)[1]
            for ref in operation["messages"]
        }

    documented = {key: message["name"] for key, message in contract.document()["components"]["messages"].items()}
    assert {documented[n] for n in names(operations["sendUserEvents"])} == QUEUED_TYPES
    assert {documented[n] for n in names(operations["probePresence"])} == ALL_TYPES - QUEUED_TYPES - TYPING_TOPIC_ONLY
    assert {documented[n] for n in names(operations["sendTyping"])} == TYPING_TOPIC_ONLY
    assert len(operations["sendChatEvents"]["messages"]) == len(channels["chatTopic"]["messages"])


def test_every_event_type_is_documented_and_every_documented_type_is_an_event_type():
    assert contract.documented_event_types() == ALL_TYPES


def test_chat_events_and_only_they_are_on_the_chat_topic_and_all_on_the_user_topic():
    channels = contract.document()["channels"]

    def names(channel):
        return {contract.resolve(ref["$ref"])["name"] for ref in channels[channel]["messages"].values()}

    assert names("userTopic") == ALL_TYPES - TYPING_TOPIC_ONLY
    assert names("chatTopic") == {t.value for t in EventType if t.is_chat_event} - TYPING_TOPIC_ONLY
    assert names("typingTopic") == TYPING_TOPIC_ONLY
    assert names("presenceTopic") == {"presence", "presence.cleared"}


def test_every_schema_is_valid_draft_07_and_strict():
    schemas = contract.document()["components"]["schemas"]

    for name, schema in schemas.items():
        Draft7Validator.check_schema(schema)
    loose = []
    for where, schema in object_schemas(schemas):
        # objects we control: no field beyond the documented ones, and every documented
        # field always present (a variant is a oneOf, never an optional field)
        if schema.get("additionalProperties") is not False or set(schema.get("required", ())) != set(schema["properties"]):
            loose.append(where)
    assert loose == []


def test_each_envelope_names_its_type_and_says_whether_it_has_chat_and_version():
    for event_type in EventType:
        schema = contract.event_schema(event_type)
        variants = [contract.resolve(v["$ref"]) for v in schema["oneOf"]] if "oneOf" in schema else [schema]
        for variant in variants:
            assert variant["properties"]["type"]["const"] == event_type.value
            assert set(variant["required"]) >= {"type", "data", "ts"}
            assert ("chat" in variant["required"]) == event_type.is_chat_event
            # the code's rule (which chat events leave the version alone) is the document's
            data = variant["properties"]["data"]
            flags = data.get("properties", {}) if "properties" in data else {}
            unversioned = event_type in UNVERSIONED or any(
                t == event_type and flags.get(flag, {}).get("const") is True for t, flag in UNVERSIONED_WHEN
            )
            assert ("version" in variant["required"]) == (event_type.is_chat_event and not unversioned), event_type


def test_every_example_matches_its_message_schema():
    checked = 0
    for name, message in contract.document()["components"]["messages"].items():
        for example in message.get("examples", []):
            if message["contentType"] == "application/json":
                contract.check_payload(example["payload"])
            else:
                Draft7Validator(message["payload"] if "type" in message["payload"] else contract.resolve(
                    message["payload"]["$ref"])).validate(example["payload"])
            checked += 1
    assert checked >= len(ALL_TYPES)


# --- chatserver.contract ----------------------------------------------------------------


def _user(**changes):
    return {
        "id": 1, "username": "ann", "display_name": "", "avatar": None, "presence": "online", "last_seen": None,
        "deleted": False, **changes,
    }


@pytest.mark.parametrize(
    "event, complaint",
    [
        (Event(type=EventType.FRIEND_REMOVED, data={"user": _user(), "by": 1, "extra": 2}), "'extra' was unexpected"),
        (Event(type=EventType.FRIEND_REMOVED, data={"user": _user(), "by": "1"}), "by: '1' is not of type 'integer'"),
        (Event(type=EventType.FRIEND_ACCEPTED, data={"user": _user(presence="busy"), "by": 1}), "'busy' is not one of"),
        (Event(type=EventType.FRIEND_REQUESTED, data={"user": _user()}), "'by' is a required property"),
        (Event(type=EventType.PRESENCE_UPDATED, data=_user(last_seen="yesterday")), "last_seen: 'yesterday'"),
        (Event(type=EventType.USER_UPDATED, data=_user(avatar={"url": "/a/"})), "data/avatar: 'thumbnail_url' is a required property"),
        (Event(type=EventType.USER_UPDATED, data={k: v for k, v in _user().items() if k != "deleted"}),
         "'deleted' is a required property"),
        (Event(type=EventType.MEMBER_ADDED, chat=1, data={"member": {"id": 2, "username": "b"}, "by": 1}, version=2),
         "'role' is a required property"),
        (Event(type=EventType.CHAT_UPDATED, chat=1, data={"id": 1}), "'version' is a required property"),
        (Event(type=EventType.READ_UPDATED, chat=1, version=3, data={
            "user": 1, "last_read_message_id": None, "last_read_seq": 0,
            "last_delivered_message_id": 5, "last_delivered_seq": 1}), "'version' was unexpected"),
        (Event(type=EventType.CHAT_DELETED, chat=1, version=2, data={"id": 1, "hidden": True}), "matches none"),
    ],
    ids=["extra field", "wrong type", "bad enum", "missing field", "bad timestamp", "bad avatar",
         "user without deleted", "member without role",
         "missing version", "version where none belongs", "hidden with a version"],
)
def test_check_event_refuses_what_the_document_does_not_allow(event, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        contract.check_event(event)


def test_check_payload_refuses_undocumented_types_and_non_events():
    for payload, complaint in [
        (b'{"type": "message.exploded", "data": {}, "ts": "2026-01-01T00:00:00Z"}', "not documented"),
        (b"marker", "an event is JSON"),
        (b"[1]", "a JSON object"),
        (b'{"data": {}}', "string `type`"),
    ]:
        with pytest.raises(ValueError, match=re.escape(complaint)):
            contract.check_payload(payload)


def test_chatserver_imports_no_app():
    source = (Path(contract.__file__)).read_text()
    assert not re.search(r"^\s*(from|import)\s+(accounts|chats)\b", source, re.M)


def test_the_suite_checks_every_queued_event_here_and_in_its_server_processes(settings, tmp_path):
    assert settings.OUTBOX_CHECK_SCHEMAS is True
    env = server_env(database_url="postgres://x/y", broker=NoBroker(), data_dir=tmp_path)
    assert env["DJANGO_SETTINGS_MODULE"] == "tests.settings"


@pytest.mark.django_db
def test_enqueue_refuses_an_event_that_breaks_the_contract_and_queues_nothing():
    bad = Event(type=EventType.PRESENCE_UPDATED, data={"id": 1, "username": "ann", "presence": "online"})

    with pytest.raises(ValueError, match="'last_seen' is a required property"):
        with transaction.atomic():
            outbox.enqueue(event=bad, user_ids=[1])

    assert not OutboxEvent.objects.exists()


# --- every event type, made by the real services -----------------------------------------


@pytest.mark.django_db
def test_the_services_make_every_event_type_and_each_matches_its_schema(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    alice, bob, carol, dave = make_user(), make_user(), make_user(), make_user()
    # friends: requested, accepted, removed
    social.friend_request_send(actor=bob.device.user, target_id=alice.id)
    social.friend_request_send(actor=alice.device.user, target_id=bob.id)
    social.friend_remove(actor=alice.device.user, target_id=bob.id)
    # presence
    account_presence.presence_apply(user_id=alice.id, presence="online")
    # a profile: a display name, an avatar
    assert alice.client.patch("/accounts/me/", {"display_name": "Alice"}, format="json").status_code == 200
    avatar = alice.client.put("/accounts/me/avatar/", {"file": _upload("a.png", png())}, format="multipart")
    assert avatar.status_code == 200, avatar.content
    # a group: created, renamed, a member added, a role changed, messages, pointers
    cid = alice.client.post("/chats/", {"members": [bob.id, carol.id], "name": "g"}, format="json").json()["id"]
    assert alice.client.patch(f"/chats/{cid}/", {"name": "g2"}, format="json").status_code == 200
    assert alice.client.post(f"/chats/{cid}/users/{dave.id}/").status_code == 201
    assert alice.client.patch(f"/chats/{cid}/users/{bob.id}/", {"role": "admin"}, format="json").status_code == 200
    first = alice.client.post(f"/chats/{cid}/messages/", {"content": "hi", "client_id": "c1"}, format="json").json()
    reply = bob.client.post(f"/chats/{cid}/messages/", {"content": "re", "reply_to": first["id"]}, format="json")
    assert reply.status_code == 201
    image = alice.client.post(f"/chats/{cid}/messages/", {"file": _upload("p.png", png())}, format="multipart")
    assert image.status_code == 201, image.content
    assert image.json()["attachment"]["width"] == 40
    # a reaction (bob to alice's message: alice is told), a mention
    assert bob.client.put(f"/chats/{cid}/messages/{first['id']}/reactions/%F0%9F%91%8D/").status_code == 200
    assert bob.client.post(f"/chats/{cid}/messages/", {"content": f"@{alice.username}"}, format="json").status_code == 201
    assert alice.client.patch(f"/chats/{cid}/messages/{first['id']}/", {"content": "hey"}, format="json").status_code == 200
    assert alice.client.patch(f"/chats/{cid}/messages/{first['id']}/", {"deleted": True}, format="json").status_code == 200
    assert carol.client.patch(f"/chats/{cid}/users/{carol.id}/delivered/{first['id']}/").status_code == 200
    assert carol.client.patch(f"/chats/{cid}/users/{carol.id}/messages/{image.json()['id']}/").status_code == 200
    assert carol.client.patch(f"/chats/{cid}/users/{carol.id}/", {"muted_until": "forever"}, format="json").status_code == 200
    # pins (a chat in one's list, a message), a forward, an invitation and its answer
    assert carol.client.patch(f"/chats/{cid}/users/{carol.id}/", {"pinned": True}, format="json").status_code == 200
    assert alice.client.put(f"/chats/{cid}/messages/{image.json()['id']}/pin/").status_code == 200
    forward = bob.client.post(f"/chats/{cid}/messages/", {"forward_of": image.json()["id"]}, format="json")
    assert forward.status_code == 201, forward.content
    invite = alice.client.post(f"/chats/{cid}/messages/", {"type": "invite", "invite": {"title": "chess"}}, format="json")
    assert carol.client.post(f"/chats/{cid}/messages/{invite.json()['id']}/answer/", {"answer": "accept"},
                             format="json").status_code == 200
    # members removed: a kick, then the owner leaves (ownership passes: by nobody)
    assert alice.client.delete(f"/chats/{cid}/users/{dave.id}/").status_code == 204
    assert alice.client.delete(f"/chats/{cid}/users/{alice.id}/").status_code == 204
    # the group deleted by its new owner; a direct chat hidden
    assert bob.client.delete(f"/chats/{cid}/").status_code == 204
    direct = alice.client.post("/chats/", {"members": [carol.id]}, format="json").json()["id"]
    assert alice.client.delete(f"/chats/{direct}/").status_code == 204

    events = [json.loads(row.payload) for row in OutboxEvent.objects.order_by("id") if row.payload]
    for event in events:
        contract.check_payload(event)
    assert {e["type"] for e in events} == QUEUED_TYPES
    deleted = [e["data"] for e in events if e["type"] == "chat.deleted"]
    assert deleted == [{"id": cid}, {"id": direct, "hidden": True}]
    assert {"id": bob.id, "by": None} in [
        {"id": e["data"]["member"]["id"], "by": e["data"]["by"]} for e in events if e["type"] == "member.updated"
    ]
    created = [e["data"] for e in events if e["type"] == "message.created"]
    assert created[1]["reply_preview"] == {"id": first["id"], "author": alice.id, "content": "hi", "deleted": False}
    assert created[2]["attachment"]["thumbnail_url"] is not None


def _upload(name, data):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


@pytest.mark.django_db(transaction=True)
def test_a_phone_receives_every_event_type_over_mqtt_and_each_matches_its_schema(relay, broker, settings, tmp_path):
    # given: alice's phone, like the app (persistent session, reconnects after the
    # broker's disconnects on role changes), with her presence topic
    settings.MEDIA_ROOT = str(tmp_path / "media")
    alice, bob, carol = make_user(), make_user(), make_user()
    phone = MqttProbe(broker.host, broker.port, auto_reconnect=True, keepalive=5)
    presence_topic = f"chat/presence/{alice.id}/{alice.mqtt['client_id']}"
    assert phone.connect(**alice.mqtt, will={"topic": presence_topic, "payload": "offline"}) == 0
    assert phone.subscribe(f"chat/users/{alice.id}") == 1
    try:
        # when: every kind of change that concerns alice
        assert phone.publish(presence_topic, "online", retain=True)
        bob.client.post(f"/accounts/{bob.id}/friends/{alice.id}/")
        alice.client.post(f"/accounts/{alice.id}/friends/{bob.id}/")
        cid = alice.client.post("/chats/", {"members": [bob.id], "name": "g"}, format="json").json()["id"]
        alice.client.patch(f"/chats/{cid}/", {"name": "g2"}, format="json")
        alice.client.post(f"/chats/{cid}/users/{carol.id}/")
        alice.client.patch(f"/chats/{cid}/users/{carol.id}/", {"role": "restricted"}, format="json")
        message = alice.client.post(f"/chats/{cid}/messages/", {"content": "hi"}, format="json").json()
        alice.client.post(f"/chats/{cid}/messages/", {"file": _upload("p.png", png())}, format="multipart")
        alice.client.patch(f"/chats/{cid}/messages/{message['id']}/", {"content": "hey"}, format="json")
        bob.client.put(f"/chats/{cid}/messages/{message['id']}/reactions/%E2%9D%A4%EF%B8%8F/")
        bob.client.patch(f"/chats/{cid}/users/{bob.id}/messages/{message['id']}/")
        alice.client.patch(f"/chats/{cid}/users/{alice.id}/", {"muted_until": "2999-01-01T00:00:00Z"}, format="json")
        alice.client.patch(f"/chats/{cid}/users/{alice.id}/", {"archived": True}, format="json")
        alice.client.delete(f"/chats/{cid}/users/{carol.id}/")
        alice.client.delete(f"/chats/{cid}/")
        direct = alice.client.post("/chats/", {"members": [carol.id]}, format="json").json()["id"]
        alice.client.delete(f"/chats/{direct}/")
        alice.client.delete(f"/accounts/{alice.id}/friends/{bob.id}/")
        alice.client.patch("/accounts/me/", {"display_name": "Alice"}, format="json")

        # then: every type arrives, and the probe checked each against its schema
        wait_until(lambda: set(phone.events_checked) >= QUEUED_TYPES, 30,
                   f"every event type (missing: {QUEUED_TYPES - set(phone.events_checked)})")
    finally:
        phone.close()
    assert phone.contract_failures == []
    hidden = [json.loads(m.payload)["data"] for m in phone.messages if b'"chat.deleted"' in m.payload]
    assert {"id": direct, "hidden": True} in hidden


# --- the OpenAPI schema against real responses ----------------------------------------------


def test_the_openapi_schema_is_generated_without_warnings_or_errors(tmp_path):
    # `--fail-on-warn` turns any warning (or error) of drf-spectacular into a failure;
    # `--validate` checks the result against the OpenAPI 3.0 schema.
    path = tmp_path / "openapi.yaml"
    call_command("spectacular", "--file", str(path), "--validate", "--fail-on-warn")

    schema = yaml.safe_load(path.read_text())
    assert schema["openapi"].startswith("3.0")
    assert {"tokenAuth", "bearerAuth"} == set(schema["components"]["securitySchemes"])


def _as_json_schema(node):
    """OpenAPI 3.0 schema objects as JSON Schema (draft-07): `nullable: true` becomes a
    null type, and objects get `additionalProperties: false` unless they say otherwise
    (the serializers list every field, so an undocumented one is a mistake)."""
    if isinstance(node, list):
        return [_as_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _as_json_schema(v) for k, v in node.items()}
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"oneOf": [node, {"type": "null"}]}
    for key in ("readOnly", "writeOnly", "example", "discriminator"):
        node.pop(key, None)
    return node


@pytest.fixture(scope="module")
def openapi(django_db_blocker):
    from drf_spectacular.generators import SchemaGenerator

    with django_db_blocker.unblock():
        schema = SchemaGenerator().get_schema(request=None, public=True)
    schema = json.loads(json.dumps(schema, default=str))
    document = {"components": _as_json_schema(schema["components"]), "paths": schema["paths"]}
    registry = Registry().with_resource("urn:openapi", Resource(contents=document, specification=DRAFT7))
    return schema, registry


def assert_matches_openapi(openapi, response):
    """The response's JSON body matches the schema documented for its path, method and
    status."""
    schema, registry = openapi
    request = response.wsgi_request
    path, method = request.path, request.method.lower()
    # The most literal template that matches (`/accounts/signup/` before `/accounts/{user_id}/`).
    templates = sorted(
        (t for t in schema["paths"] if re.fullmatch(re.sub(r"{\w+}", r"[^/]+", t), path) and method in schema["paths"][t]),
        key=lambda t: t.count("{"),
    )
    assert templates, f"{path} is not in the OpenAPI schema"
    operation = schema["paths"][templates[0]][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method.upper()} {templates[0]} does not document {response.status_code}"
    body_schema = _as_json_schema(documented["content"]["application/json"]["schema"])
    # Its refs ("#/components/...") point into the registered document.
    body_schema = json.loads(json.dumps(body_schema).replace('"#/components/', '"urn:openapi#/components/'))
    validator = Draft7Validator(body_schema, registry=registry)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(response.json())]
    assert errors == [], f"{method.upper()} {path} ({response.status_code}) does not match the OpenAPI schema"


@pytest.mark.django_db
def test_real_responses_match_the_openapi_schema(openapi, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    anonymous = APIClient()
    signup = anonymous.post("/accounts/signup/", {"username": "olga", "password": PASSWORD}, format="json")
    assert signup.status_code == 201
    assert_matches_openapi(openapi, signup)
    login = anonymous.post("/accounts/login/", {"username": "olga", "password": PASSWORD}, format="json")
    assert_matches_openapi(openapi, login)
    olga = APIClient()
    olga.credentials(HTTP_AUTHORIZATION=f"Token {login.json()['token']}")
    olga_id = login.json()["id"]
    assert_matches_openapi(openapi, olga.get("/accounts/me/"))
    bob, carol = make_user(), make_user()

    responses = [
        olga.post("/chats/", {"members": [bob.id, carol.id], "name": "team"}, format="json"),
        olga.post("/chats/", {"members": [bob.id]}, format="json"),
        olga.post("/chats/", {"members": [bob.id]}, format="json"),  # 200: the same direct chat
    ]
    cid = responses[0].json()["id"]
    first = olga.post(f"/chats/{cid}/messages/", {"content": "hi", "client_id": "x1"}, format="json")
    responses += [
        first,
        olga.post(f"/chats/{cid}/messages/", {"content": "hi", "client_id": "x1"}, format="json"),  # 200: retry
        bob.client.post(f"/chats/{cid}/messages/", {"content": "re", "reply_to": first.json()["id"]}, format="json"),
        olga.post(f"/chats/{cid}/messages/", {"file": _upload("p.png", png()), "content": "pic"}, format="multipart"),
        bob.client.put(f"/chats/{cid}/messages/{first.json()['id']}/reactions/%F0%9F%94%A5/"),
        olga.post(f"/chats/{cid}/messages/", {"content": f"@{bob.username} @all"}, format="json"),
        olga.put(f"/chats/{cid}/messages/{first.json()['id']}/pin/"),
        olga.get(f"/chats/{cid}/pins/"),
        bob.client.post(f"/chats/{cid}/messages/", {"forward_of": first.json()["id"]}, format="json"),
        olga.post(f"/chats/{cid}/messages/", {"type": "invite", "invite": {
            "title": "chess", "url": "https://example.org/g", "expires_at": "2999-01-01T00:00:00Z"}}, format="json"),
        olga.patch(f"/chats/{cid}/users/{olga_id}/", {"pinned": True}, format="json"),
        olga.patch(f"/chats/{cid}/users/{olga_id}/", {"archived": True}, format="json"),
        olga.get(f"/accounts/{olga_id}/chats/", {"archived": "true"}),
        olga.patch(f"/chats/{cid}/messages/{first.json()['id']}/", {"deleted": True}, format="json"),
        linked := olga.post(f"/chats/{cid}/messages/", {"content": "see https://example.org/x"}, format="json"),
        olga.get(f"/chats/{cid}/"),
        olga.patch(f"/chats/{cid}/", {"name": "team2"}, format="json"),
        # the previews worker's part, done here: the page of the link was read
        message_preview_set(message_id=linked.json()["id"], url="https://example.org/x",
                            preview={"title": "X", "description": None, "image": None}) and None,
        olga.get(f"/chats/{cid}/messages/"),
        olga.get("/search/messages/", {"q": "hi see"}),
        olga.get("/search/messages/", {"q": "example", "chat": cid, "limit": 1}),
        olga.get(f"/chats/{cid}/users/"),
        olga.post(f"/chats/{cid}/users/{make_user().id}/"),
        olga.patch(f"/chats/{cid}/users/{carol.id}/", {"role": "restricted"}, format="json"),
        bob.client.patch(f"/chats/{cid}/users/{bob.id}/messages/{first.json()['id']}/"),
        bob.client.patch(f"/chats/{cid}/users/{bob.id}/delivered/{first.json()['id']}/"),
        olga.post("/chats/sync/", {"chats": {str(cid): 1, "999": 0}}, format="json"),
        olga.get(f"/accounts/{olga_id}/chats/"),
        olga.get("/accounts/", {"search": "ol"}),
        olga.get(f"/accounts/{bob.id}/"),
        olga.post(f"/accounts/{olga_id}/friends/{bob.id}/"),
        olga.get(f"/accounts/{olga_id}/friends/requests/"),
        bob.client.post(f"/accounts/{bob.id}/friends/{olga_id}/"),
        olga.get(f"/accounts/{olga_id}/friends/"),
        olga.post(f"/accounts/{olga_id}/blocks/{carol.id}/"),
        olga.get(f"/accounts/{olga_id}/blocks/"),
        olga.patch("/accounts/me/", {"read_receipts": False, "display_name": "Olga"}, format="json"),
        olga.put("/accounts/me/avatar/", {"file": _upload("a.png", png())}, format="multipart"),
        olga.get("/accounts/me/devices/"),
        olga.post("/accounts/me/password/", {"current_password": PASSWORD, "new_password": PASSWORD + "!"},
                  format="json"),
        anonymous.get("/health/"),
    ]
    image = responses[6].json()
    responses.append(olga.get(f"/chats/{cid}/messages/{image['id']}/attachment/link/"))
    invite = responses[12].json()
    assert invite["type"] == "invite", invite
    responses.append(bob.client.post(f"/chats/{cid}/messages/{invite['id']}/answer/", {"answer": "decline"}, format="json"))

    statuses = Counter()
    responses = [r for r in responses if r is not None]
    [history] = [r for r in responses if r.wsgi_request.method == "GET" and r.wsgi_request.path == f"/chats/{cid}/messages/"]
    assert history.json()["results"][-1]["link_preview"]["title"] == "X"
    for response in responses:
        assert response.status_code in (200, 201), (response.wsgi_request.path, response.content)
        assert_matches_openapi(openapi, response)
        statuses[response.status_code] += 1
    assert statuses == {200: 33, 201: 12}


def _operations(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield f"{method.upper()} {path}", operation


def _validate(openapi, node_schema, value) -> list[str]:
    schema, registry = openapi
    body_schema = json.loads(json.dumps(_as_json_schema(node_schema)).replace('"#/components/', '"urn:openapi#/components/'))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in Draft7Validator(body_schema, registry=registry).iter_errors(value)]


def test_every_operation_has_a_summary_and_examples_that_match_its_schemas(openapi):
    schema, _ = openapi
    missing, wrong, checked = [], [], 0
    for name, operation in _operations(schema):
        if not operation.get("summary", "").endswith("."):
            missing.append(f"{name}: summary")
        bodies = [("request", operation.get("requestBody", {}).get("content", {}))]
        bodies += [(status, response.get("content", {})) for status, response in operation["responses"].items()]
        for where, content in bodies:
            media = content.get("application/json")
            if media is None:
                continue
            # every JSON body in or out (errors included) shows at least one example
            if not media.get("examples"):
                missing.append(f"{name} {where}: example")
            for key, example in media.get("examples", {}).items():
                checked += 1
                wrong += [f"{name} {where} {key}: {e}" for e in _validate(openapi, media["schema"], example["value"])]
    assert missing == []
    assert wrong == []
    assert checked > 150


def test_every_error_code_documented_for_an_operation_is_a_code_of_the_api(openapi):
    from accounts.errors import AccountsErrorCode
    from chats.errors import ChatsErrorCode
    from chatserver.errors import ErrorCode

    schema, _ = openapi
    documented = set()
    for name, operation in _operations(schema):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and "error" in str(response):
                codes = response["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"]
                documented |= set(codes["enum"])
    codes = {code.value for enum in (ErrorCode, AccountsErrorCode, ChatsErrorCode) for code in enum}
    assert documented - codes == set()
    # each code a client can get shows on some operation; the rest come from no operation's
    # own input (an undocumented method or Accept header, a bug, Django's own refusals)
    assert codes - documented == {"method_not_allowed", "not_acceptable", "server_error", "permission_denied",
                                  "conflict"}


def test_each_event_topic_carries_its_channel_s_event_types_only():
    # typing on the typing topic only; chat events on the chat's topic and user topics
    contract.check_topic("chat/chats/7/typing", "typing.updated")
    contract.check_topic("chat/chats/7", "message.created")
    contract.check_topic("chat/users/5", "presence.probe")
    for topic, event_type in [("chat/chats/7", "typing.updated"), ("chat/users/5", "typing.updated"),
                              ("chat/chats/7/typing", "message.created"), ("chat/chats/7", "presence.probe"),
                              ("chat/chats/7/other", "message.created"), ("chat/chats/+", "message.created")]:
        with pytest.raises(ValueError):
            contract.check_topic(topic, event_type)
