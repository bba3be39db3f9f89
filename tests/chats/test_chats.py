"""Chats, members and messages over HTTP (in-process), with their outbox rows."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import authentication
from accounts.authentication import TOKEN_CACHE
from accounts.models import Device, User, hash_token
from chats.models import Chat, Membership, Message
from chatserver import outbox
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


def post(client, path, body=None):
    return client.post(path, body, format="json")


def group(owner, *members, name="team"):
    response = post(owner.client, "/chats/", {"members": [m.id for m in members], "name": name})
    assert response.status_code == 201, response.content
    return response.json()


def send(user, chat_id, content="hello", **extra):
    return post(user.client, f"/chats/{chat_id}/messages/", {"content": content, **extra})


def events(type_=None):
    rows = [(e, json.loads(e.payload)) for e in OutboxEvent.objects.order_by("id") if e.payload]
    return [(e, p) for e, p in rows if type_ is None or p["type"] == type_]


# --- creating chats ---------------------------------------------------------------------


def test_direct_chat_is_created_once_per_pair_from_either_side():
    # given
    alice, bob = make_user(), make_user()

    # when
    first = post(alice.client, "/chats/", {"members": [bob.id]})
    again = post(alice.client, "/chats/", {"members": [bob.id, alice.id]})
    reverse = post(bob.client, "/chats/", {"members": [alice.id]})

    # then
    assert first.status_code == 201
    assert again.status_code == 200
    assert reverse.status_code == 200
    chat = first.json()
    assert again.json()["id"] == reverse.json()["id"] == chat["id"]
    assert chat["type"] == "direct"
    assert sorted((m["id"], m["role"]) for m in chat["members"]) == sorted(
        [(alice.id, "member"), (bob.id, "member")]
    )
    assert Chat.objects.count() == 1
    [(event, payload)] = events("chat.created")
    assert sorted(event.user_ids) == sorted([alice.id, bob.id])
    assert event.chat_id == chat["id"]
    assert event.access == [
        {"op": "chat_add", "chat": chat["id"]},
        {"op": "member_grant", "chat": chat["id"], "user": alice.id},
        {"op": "member_grant", "chat": chat["id"], "user": bob.id},
    ]
    assert payload["data"]["id"] == chat["id"]


def test_group_creator_is_owner_and_others_members():
    alice, bob, carol = make_user(), make_user(), make_user()

    chat = group(alice, bob, carol, name="Friday")

    assert chat["type"] == "group"
    assert chat["name"] == "Friday"
    roles = {m["id"]: m["role"] for m in chat["members"]}
    assert roles == {alice.id: "owner", bob.id: "member", carol.id: "member"}


def test_two_members_with_a_name_make_a_group_not_the_direct_chat():
    alice, bob = make_user(), make_user()

    chat = group(alice, bob, name="just us")

    assert chat["type"] == "group"
    assert Chat.objects.get(id=chat["id"]).direct_key is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"members": []},
        {"members": "2"},
        {"members": [None]},
        {"members": ["x"]},
        {"members": [0]},
        {"members": [-1]},
        {"members": [2**64]},
        {"members": [1.5]},
        {"members": [2], "name": ["x"]},
        {"members": [2], "name": "n" * 101},
    ],
)
def test_chat_create_rejects_bad_bodies(body):
    alice = make_user()

    response = post(alice.client, "/chats/", body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert Chat.objects.count() == 0


def test_chat_create_with_only_oneself_or_unknown_users_is_400():
    alice = make_user()

    alone = post(alice.client, "/chats/", {"members": [alice.id]})
    unknown = post(alice.client, "/chats/", {"members": [alice.id + 1000]})

    assert alone.status_code == 400
    assert unknown.status_code == 400
    assert "members" in unknown.json()["error"]["fields"]
    assert Chat.objects.count() == 0
    assert not events()


# --- sending and reading ---------------------------------------------------------------


def test_messages_get_seq_1_2_3_and_an_event_for_every_member():
    # given
    alice, bob, carol = make_user(), make_user(), make_user()
    chat = group(alice, bob, carol)
    OutboxEvent.objects.all().delete()

    # when
    responses = [send(alice, chat["id"], f"m{i}") for i in range(3)]

    # then
    assert [r.status_code for r in responses] == [201, 201, 201]
    bodies = [r.json() for r in responses]
    assert [b["seq"] for b in bodies] == [1, 2, 3]
    first = bodies[0]
    assert set(first) == {
        "id", "chat", "seq", "author", "type", "content", "reply_to", "reply_preview",
        "client_id", "created_at", "edited_at", "deleted", "version", "unread_count", "attachment",
        "reactions", "mentions", "pinned_at", "pinned_by", "forwarded", "forwarded_from", "invite", "link_preview",
    }
    assert first["author"] == alice.id
    assert first["chat"] == chat["id"]
    assert first["type"] == "text"
    assert first["content"] == "m0"
    assert first["deleted"] is False
    assert first["unread_count"] == 2  # bob and carol
    assert first["created_at"].endswith("Z")
    published = events("message.created")
    assert [p["data"] for _, p in published] == bodies  # the same object as the HTTP answer
    for event, payload in published:
        assert sorted(event.user_ids) == sorted([alice.id, bob.id, carol.id])
        assert event.chat_id == chat["id"]
        assert payload["chat"] == chat["id"]
    # sending moves the author's read pointer
    pointer = Membership.objects.get(chat_id=chat["id"], user_id=alice.id)
    assert (pointer.last_read_seq, pointer.last_read_message_id) == (3, bodies[2]["id"])


def test_same_client_id_returns_the_first_message_and_writes_nothing():
    # given
    alice, bob = make_user(), make_user()
    chat = group(alice, bob)
    first = send(alice, chat["id"], "once", client_id="c-1")
    before = OutboxEvent.objects.count()

    # when
    again = send(alice, chat["id"], "once (retried)", client_id="c-1")

    # then
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert Message.objects.count() == 1
    assert OutboxEvent.objects.count() == before
    # a client id is the sender's own: another sender may use the same one
    assert send(bob, chat["id"], "mine", client_id="c-1").status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": ""},
        {"content": "   \n"},
        {"content": None},
        {"content": 42},
        {"content": ["hi"]},
        {"content": {"text": "hi"}},
        {"content": "x" * 10_001},
        {"content": "hi", "client_id": "x" * 65},
        {"content": "hi", "client_id": ""},
        {"content": "hi", "client_id": 7},
        {"content": "hi", "reply_to": "first"},
        {"content": "hi", "reply_to": 2**64},
    ],
)
def test_send_rejects_bad_bodies_and_stores_nothing(body):
    alice, bob = make_user(), make_user()
    chat = group(alice, bob)
    OutboxEvent.objects.all().delete()

    response = post(alice.client, f"/chats/{chat['id']}/messages/", body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert Message.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
    assert Chat.objects.get(id=chat["id"]).last_seq == 0


def test_reply_to_must_be_a_message_of_the_same_chat():
    alice, bob = make_user(), make_user()
    one, other = group(alice, bob), group(alice, bob, name="other")
    elsewhere = send(alice, other["id"], "elsewhere").json()
    here = send(alice, one["id"], "here").json()

    foreign = send(alice, one["id"], "re", reply_to=elsewhere["id"])
    ok = send(bob, one["id"], "re", reply_to=here["id"])

    assert foreign.status_code == 400
    assert "reply_to" in foreign.json()["error"]["fields"]
    assert ok.status_code == 201
    assert ok.json()["reply_to"] == here["id"]


def test_outsiders_get_404_for_everything_about_a_chat():
    # given
    alice, bob, mallory = make_user(), make_user(), make_user()
    chat = group(alice, bob)
    send(alice, chat["id"], "secret")
    OutboxEvent.objects.all().delete()
    cid = chat["id"]

    # when
    responses = [
        mallory.client.get(f"/chats/{cid}/"),
        mallory.client.get(f"/chats/{cid}/messages/"),
        send(mallory, cid, "hi"),
        mallory.client.get(f"/chats/{cid}/users/"),
        post(mallory.client, f"/chats/{cid}/users/{mallory.id}/"),
        mallory.client.patch(f"/chats/{cid}/", {"name": "mine"}, format="json"),
        mallory.client.delete(f"/chats/{cid}/"),
        mallory.client.delete(f"/chats/{cid}/users/{bob.id}/"),
        mallory.client.get("/chats/999999/"),
        send(mallory, 999999, "hi"),
    ]

    # then: the same answer as for a chat that does not exist
    assert [r.status_code for r in responses] == [404] * len(responses)
    assert {r.json()["error"]["code"] for r in responses} == {"chat_not_found"}
    assert Message.objects.count() == 1
    assert OutboxEvent.objects.count() == 0
    assert Chat.objects.get(id=cid).name == "team"


def test_history_pages_with_before_after_and_has_more():
    # given
    alice, bob = make_user(), make_user()
    cid = group(alice, bob)["id"]
    ids = [send(alice, cid, f"m{i}").json()["id"] for i in range(7)]

    def page(**query):
        response = bob.client.get(f"/chats/{cid}/messages/", query)
        assert response.status_code == 200, response.content
        body = response.json()
        return [m["id"] for m in body["results"]], body["has_more"]

    # then
    assert page() == (ids, False)
    assert page(limit=3) == (ids[4:], True)
    assert page(limit=3, before=ids[4]) == (ids[1:4], True)
    assert page(limit=3, before=ids[1]) == (ids[:1], False)
    assert page(after=ids[1], limit=3) == (ids[2:5], True)
    assert page(after=ids[4], limit=3) == (ids[5:], False)
    assert page(after=ids[0], before=ids[3]) == (ids[1:3], False)
    assert page(after=ids[6]) == ([], False)
    # unread counts come from the pointers: bob has read nothing yet
    results = bob.client.get(f"/chats/{cid}/messages/").json()["results"]
    assert [m["unread_count"] for m in results] == [1] * 7


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "limit=x", "before=abc", "after=-1", "before=99999999999999999999"],
)
def test_history_rejects_bad_cursors(query):
    alice, bob = make_user(), make_user()
    cid = group(alice, bob)["id"]

    response = alice.client.get(f"/chats/{cid}/messages/?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("content", [
    "hello",
    "100% sure: %s, %1$s, %%",
    # a slot's digits in the words: the row is queued after the write instead
    f"call me at {outbox.slot(1)}",
])
def test_the_sends_outbox_row_is_the_event_of_the_object_the_api_returns(content):
    # given
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = group(alice, bob, carol)["id"]
    OutboxEvent.objects.all().delete()

    # when
    response = send(alice, cid, content)

    # then: one row, to every member and the chat's topic, carrying the answer's object
    assert response.status_code == 201
    [(row, payload)] = events()
    assert payload["type"] == "message.created"
    assert payload["data"] == response.json()
    assert payload["data"]["content"] == content
    assert (payload["chat"], payload["version"]) == (cid, response.json()["version"])
    assert response.json()["unread_count"] == 2
    assert sorted(row.user_ids) == sorted([alice.id, bob.id, carol.id])
    assert (row.chat_id, row.partition_key, row.access) == (cid, cid, [])
    # the datetimes as the API writes them (DRF's format)
    assert '"created_at":"%s"' % response.json()["created_at"] in row.payload


def test_send_costs_a_fixed_number_of_queries_whatever_the_group_size(no_backpressure_probe):
    alice = make_user()
    small = group(alice, make_user())["id"]
    large = group(alice, *[make_user() for _ in range(30)])["id"]
    send(alice, small, "warm-up")

    counts = []
    for cid in (small, large):
        with CaptureQueriesContext(connection) as queries:
            # with a client_id, as phones send: checking it costs no query of its own
            assert send(alice, cid, "hi", client_id=f"c-{cid}").status_code == 201
        counts.append(len(queries))

    assert counts[0] == counts[1]
    # the rate limit (one conditional upsert of the sender's bucket), the write (device
    # still signed in, checks, seq, message, pointers, member ids, the outbox row whose
    # trigger notifies, the push job: one statement), plus the savepoint and its release
    # that the test's own transaction turns BEGIN and COMMIT into; no token query: the
    # warm-up put the device in the token cache, and the write checks it
    assert counts[0] == 4, [q["sql"] for q in queries.captured_queries]
    assert not [q for q in queries.captured_queries if "INSERT INTO \"chat_outbox\"" in q["sql"]]
    assert len([q for q in queries.captured_queries if "chat_rate_bucket" in q["sql"]]) == 1
    assert not [q for q in queries.captured_queries if q["sql"].startswith("SELECT") and "accounts_device" in q["sql"]]


# --- the token cache: revocation holds on the next POST ---------------------------------


def message_created_events():
    return [p for _, p in events("message.created")]


def test_a_logged_out_devices_token_is_refused_on_the_next_post_though_the_cache_held_it():
    # given: alice's token is in the cache (she sent), then she logs out
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    assert send(alice, cid, "before", client_id="k1").status_code == 201
    assert alice.client.post("/accounts/logout/").status_code == 204
    assert TOKEN_CACHE.get(hash_token(alice.token)) is not None
    OutboxEvent.objects.all().delete()

    # when: a new message, then a retry of the first
    refused = send(alice, cid, "after", client_id="k2")
    retry = send(alice, cid, "before", client_id="k1")

    # then: 401 as without the cache, nothing stored, nothing queued (so nothing published)
    assert refused.status_code == retry.status_code == 401
    assert refused.json() == {"error": {"code": "invalid_token", "message": "Invalid or revoked token."}}
    assert refused.headers["WWW-Authenticate"] == alice.client.get("/accounts/me/").headers["WWW-Authenticate"]
    assert list(Message.objects.values_list("content", flat=True)) == ["before"]
    assert OutboxEvent.objects.count() == 0
    assert TOKEN_CACHE.get(hash_token(alice.token)) is None


def test_a_deactivated_users_token_is_refused_on_the_next_post_though_the_cache_held_it():
    # given: deactivated behind User.save's back (the device row stays until the sweep)
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    assert send(alice, cid, "before").status_code == 201
    User.objects.filter(id=alice.id).update(is_active=False)
    assert TOKEN_CACHE.get(hash_token(alice.token)) is not None
    OutboxEvent.objects.all().delete()

    # when
    refused = send(alice, cid, "after")

    # then
    assert refused.status_code == 401
    assert refused.json() == {"error": {"code": "invalid_token", "message": "User inactive or deleted."}}
    assert Message.objects.count() == 1
    assert OutboxEvent.objects.count() == 0


@pytest.mark.parametrize("body", [{"content": ""}, {"content": "re", "reply_to": 1}, {"forward_of": 1}])
def test_a_revoked_cached_token_gets_401_not_another_answer(body):
    # given: in the cache, then signed out
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    assert send(alice, cid, "before").status_code == 201
    Device.objects.filter(id=alice.device.id).delete()

    # when: a bad body (400 otherwise), a reply or forward (read before the write)
    refused = post(alice.client, f"/chats/{cid}/messages/", body)

    # then
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_token"
    assert Message.objects.count() == 1


def test_a_forward_retried_after_a_sign_out_gets_401_not_the_first_message():
    # given: alice forwarded with a client_id (her token cached), then her device is gone
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    original = send(alice, cid, "look").json()["id"]
    assert post(alice.client, f"/chats/{cid}/messages/", {"forward_of": original, "client_id": "f1"}).status_code == 201
    Device.objects.filter(id=alice.device.id).delete()

    # when: the same forward again (answered before any write: no statement checks it)
    retry = post(alice.client, f"/chats/{cid}/messages/", {"forward_of": original, "client_id": "f1"})

    # then
    assert retry.status_code == 401
    assert retry.json()["error"]["code"] == "invalid_token"
    assert TOKEN_CACHE.get(hash_token(alice.token)) is None


def test_a_refused_post_from_the_cache_reads_the_device_once():
    # given: alice's token cached; bob's chat, of which she is not a member
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    assert send(alice, cid, "hi").status_code == 201
    other = post(bob.client, "/chats/", {"members": [carol.id]}).json()["id"]

    # when: she posts where she may not
    with CaptureQueriesContext(connection) as queries:
        refused = send(alice, other, "let me in")

    # then: 404 as for any outsider, the device read once (by the refused write's check)
    assert refused.status_code == 404
    device_reads = [q["sql"] for q in queries.captured_queries if 'FROM "accounts_device"' in q["sql"]]
    assert len(device_reads) == 1, device_reads


def test_only_the_json_message_post_uses_the_token_cache():
    # given: alice's token cached by a POST, her device then gone
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    assert send(alice, cid, "before").status_code == 201
    Device.objects.filter(id=alice.device.id).delete()

    # when / then: the history (GET of the same path) and any other endpoint read the device
    assert alice.client.get(f"/chats/{cid}/messages/").status_code == 401
    assert alice.client.get("/accounts/me/").status_code == 401
    assert post(alice.client, f"/chats/{cid}/typing/", {}).status_code == 401


def test_last_seen_is_still_written_once_a_minute_with_the_cache(monkeypatch):
    # given: alice's device in the cache
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    assert send(alice, cid, "first").status_code == 201
    first_seen = Device.objects.get(id=alice.device.id).last_seen_at
    later = first_seen + authentication.LAST_SEEN_RESOLUTION
    monkeypatch.setattr(authentication.timezone, "now", lambda: later)

    # when: a minute later, twice
    with CaptureQueriesContext(connection) as queries:
        assert send(alice, cid, "a minute later").status_code == 201
        assert send(alice, cid, "again").status_code == 201

    # then: written once, by the first
    assert Device.objects.get(id=alice.device.id).last_seen_at == later
    assert len([q for q in queries.captured_queries if q["sql"].startswith("UPDATE") and "accounts_device" in q["sql"]]) == 1


# --- paths and errors ------------------------------------------------------------------


def test_paths_work_without_trailing_slash_and_post_is_not_redirected():
    alice, bob = make_user(), make_user()

    created = alice.client.post("/chats", {"members": [bob.id], "name": "x"}, format="json")
    assert created.status_code == 201
    cid = created.json()["id"]
    sent = alice.client.post(f"/chats/{cid}/messages", {"content": "no slash"}, format="json")
    assert sent.status_code == 201
    assert alice.client.get(f"/chats/{cid}/messages").json()["results"][0]["content"] == "no slash"
    assert alice.client.get("/accounts/me").status_code == 200


def test_unknown_paths_and_methods_answer_json_errors():
    alice = make_user()

    missing = alice.client.get("/nope/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    not_int = alice.client.get("/chats/abc/")
    assert not_int.status_code == 404
    assert not_int.json()["error"]["code"] == "not_found"
    wrong_method = alice.client.put("/chats/", {}, format="json")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_schema_and_docs_are_served():
    alice = make_user()

    schema = alice.client.get("/api/schema/", HTTP_ACCEPT="application/json")
    docs = alice.client.get("/api/docs/")

    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    for path in [
        "/accounts/signup/", "/accounts/login/", "/accounts/logout/", "/accounts/me/",
        "/chats/", "/chats/{chat_id}/", "/chats/{chat_id}/messages/",
        "/chats/{chat_id}/users/", "/chats/{chat_id}/users/{user_id}/", "/health/",
    ]:
        assert path in paths
    assert docs.status_code == 200


@pytest.mark.parametrize("content", [
    "   \n\t ",
    "\u200b\u200b\u200b",  # zero-width spaces
    "\u200d\ufeff\u2060",  # joiner, BOM, word joiner
    "\u3164\u3164",  # Hangul fillers: letters that show nothing
    "\u202e \u2066",  # direction marks
])
def test_content_that_shows_nothing_is_refused_like_blank_content(content):
    alice, bob = make_user(), make_user()
    cid = group(alice, bob)["id"]
    sent = send(alice, cid, "hi")
    OutboxEvent.objects.all().delete()

    created = send(alice, cid, content)
    edited = alice.client.patch(f"/chats/{cid}/messages/{sent.json()['id']}/", {"content": content}, format="json")

    for response in (created, edited):
        assert response.status_code == 400
        assert response.json()["error"]["fields"]["content"] == ["This field may not be blank."]
    assert OutboxEvent.objects.count() == 0


def test_content_with_something_visible_among_invisible_characters_is_kept():
    alice, bob = make_user(), make_user()
    cid = group(alice, bob)["id"]

    response = send(alice, cid, "\u200b👍\u200d")

    assert response.status_code == 201
    assert response.json()["content"] == "\u200b👍\u200d"


# --- the plain message's fast path --------------------------------------------------------

PLAIN_BODIES = [
    {"content": "hello"},
    {"content": "hello", "client_id": "c-1"},
    {"content": "hello", "client_id": None},
    {"content": " leading and trailing spaces kept "},
    {"content": "x" * 10_000},
    {"content": "x" * 10_001},
    {"content": ""},
    {"content": "   "},
    {"content": "\u200b\u200d\ufeff"},
    {"content": "a\x00b"},
    {"content": "lone \ud800 surrogate"},
    {"content": "emoji 🙂 and ünïcödé"},
    {"content": 42},
    {"content": None},
    {"content": ["hello"]},
    {"content": True},
    {"content": "hello", "client_id": ""},
    {"content": "hello", "client_id": "x" * 64},
    {"content": "hello", "client_id": "x" * 65},
    {"content": "hello", "client_id": "tab\there"},
    {"content": "hello", "client_id": 7},
    {"content": "hello", "reply_to": None},
    {"content": "hello", "type": "text"},
    {"content": "hello", "unknown": 1},
    {"client_id": "c-2"},
    {},
]


@pytest.mark.parametrize("body", PLAIN_BODIES, ids=range(len(PLAIN_BODIES)))
def test_the_plain_message_s_fast_path_accepts_only_what_the_serializer_accepts_and_gives_the_same(body):
    from chats.serializers import MessageCreateInput, message_create_plain

    # given: the serializer's verdict on a body
    serializer = MessageCreateInput(data=body)
    valid = serializer.is_valid()
    # when
    plain = message_create_plain(body)
    # then: the fast path takes only valid bodies (else the serializer words the refusal), as the serializer reads them
    if plain is not None:
        assert valid, serializer.errors
        assert plain == dict(serializer.validated_data)
    if body in ({"content": "hello"}, {"content": "hello", "client_id": "c-1"}, {"content": "x" * 10_000}):
        assert plain is not None  # the commonest bodies do take it


def test_a_blank_plain_message_is_refused_with_the_serializer_s_words():
    # given
    alice, bob = make_user(), make_user()
    chat = post(alice.client, "/chats/", {"members": [bob.id]}).json()
    # when
    response = send(alice, chat["id"], content="\u200b ")
    # then
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "validation_error", "message": "Invalid input.",
                                         "fields": {"content": ["This field may not be blank."]}}}
    assert not Message.objects.filter(chat_id=chat["id"]).exists()
