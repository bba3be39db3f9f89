"""Search: `GET /search/messages/` over what the caller can read now, in any language."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chats.search import snippet
from tests.support.factories import group_chat, make_user, send_message


def search(user, q, **params):
    response = user.client.get("/search/messages/", {"q": q, **params})
    assert response.status_code == 200, response.content
    return response.json()


def ids(page):
    return [hit["id"] for hit in page["results"]]


@pytest.fixture
def team(db):
    alice, bob, carol = make_user(), make_user(), make_user()
    return alice, bob, carol, group_chat(alice, bob, carol)


@pytest.mark.django_db
def test_words_match_as_prefixes_in_korean_french_and_english_newest_first(team):
    # given
    alice, bob, carol, cid = team
    ko = send_message(alice, cid, "주말에 친구들과 등산 갈래요?")
    fr = send_message(bob, cid, "On se retrouve à l'Été Café, d'accord ?")
    en = send_message(carol, cid, "Climbing chats: bring the ropes")
    send_message(alice, cid, "nothing to see")

    # then
    assert ids(search(bob, "친구")) == [ko["id"]]
    assert ids(search(bob, "été")) == [fr["id"]]
    assert ids(search(bob, "ÉTÉ café")) == [fr["id"]]
    assert ids(search(bob, "chat")) == [en["id"]]
    assert ids(search(bob, "ropes bring")) == [en["id"]]
    assert ids(search(bob, "limbing")) == []  # inside a word: not in spaced scripts
    assert ids(search(bob, "c")) == [en["id"], fr["id"]]  # newest first
    hit = search(bob, "친구")["results"][0]
    assert hit == {
        "id": ko["id"], "chat": cid, "seq": ko["seq"], "author": alice.id, "type": "text",
        "created_at": ko["created_at"], "edited_at": None,
        "snippet": "주말에 친구들과 등산 갈래요?", "highlights": [[4, 6]],
    }


@pytest.mark.django_db
def test_spaceless_scripts_match_inside_words(team):
    alice, bob, carol, cid = team
    ja = send_message(alice, cid, "私は東京に住んでいます")
    ko = send_message(alice, cid, "여자친구랑 영화 봤어")

    assert ids(search(bob, "東京")) == [ja["id"]]
    assert ids(search(bob, "친구")) == [ko["id"]]
    assert search(bob, "東京")["results"][0]["highlights"] == [[2, 4]]


@pytest.mark.django_db
def test_only_what_the_caller_can_read_now(team):
    # given
    alice, bob, carol, cid = team
    other = group_chat(alice, carol)  # bob is not in it
    send_message(alice, other, "secret plan")
    left = group_chat(alice, bob)
    send_message(alice, left, "secret of a chat bob left")
    assert bob.client.delete(f"/chats/{left}/users/{bob.id}/").status_code == 204
    kicked = group_chat(alice, bob)
    send_message(alice, kicked, "secret of a chat bob was kicked from")
    assert alice.client.delete(f"/chats/{kicked}/users/{bob.id}/").status_code == 204
    deleted = send_message(alice, cid, "secret deleted")
    alice.client.patch(f"/chats/{cid}/messages/{deleted['id']}/", {"deleted": True}, format="json")
    before_joining = send_message(alice, cid, "secret before dave joined")
    dave = make_user()
    assert alice.client.post(f"/chats/{cid}/users/{dave.id}/").status_code == 201
    edited = send_message(alice, cid, "nothing here")
    alice.client.patch(f"/chats/{cid}/messages/{edited['id']}/", {"content": "secret after the edit"}, format="json")

    # then: bob sees his chat's live messages only; history is shared, so dave, who
    # joined later, finds what was sent before he joined
    assert ids(search(bob, "secret")) == [edited["id"], before_joining["id"]]
    assert ids(search(dave, "secret")) == [edited["id"], before_joining["id"]]
    assert ids(search(carol, "secret")) == [edited["id"], before_joining["id"], *ids(search(carol, "plan"))]
    assert search(bob, "secret")["results"][0]["edited_at"] is not None


@pytest.mark.django_db
def test_one_chat_and_pages_by_before(team):
    # given
    alice, bob, carol, cid = team
    other = group_chat(alice, bob)
    sent = [send_message(alice, cid if i % 2 else other, f"page {i}") for i in range(7)]

    # when
    first = search(bob, "page", limit=3)
    second = search(bob, "page", limit=3, before=first["results"][-1]["id"])
    third = search(bob, "page", limit=3, before=second["results"][-1]["id"])
    in_chat = search(bob, "page", chat=cid)

    # then
    newest_first = [m["id"] for m in reversed(sent)]
    assert (ids(first), first["has_more"]) == (newest_first[:3], True)
    assert (ids(second), second["has_more"]) == (newest_first[3:6], True)
    assert (ids(third), third["has_more"]) == (newest_first[6:], False)
    assert ids(in_chat) == [m["id"] for m in reversed(sent) if m["chat"] == cid]


@pytest.mark.django_db
def test_bad_queries_and_other_people_s_chats_are_refused(team):
    alice, bob, carol, cid = team
    outsider = make_user()

    for q in ("", "   ", "x" * 201):
        response = bob.client.get("/search/messages/", {"q": q})
        assert response.status_code == 400, q
        assert response.json()["error"]["code"] == "validation_error"
        assert list(response.json()["error"]["fields"]) == ["q"]
    assert bob.client.get("/search/messages/").status_code == 400
    assert bob.client.get("/search/messages/", {"q": "x", "limit": 51}).status_code == 400
    refused = outsider.client.get("/search/messages/", {"q": "x", "chat": cid})
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "chat_not_found")
    assert ids(search(bob, "x" * 200)) == []
    assert ids(search(bob, "!!! ???")) == []  # no word: nothing matches, no error
    assert ids(search(bob, "100%_\\")) == []


@pytest.mark.django_db
def test_a_search_is_two_queries_after_the_token(team):
    alice, bob, carol, cid = team
    send_message(alice, cid, "hello")
    search(bob, "hello")

    with CaptureQueriesContext(connection) as queries:
        search(bob, "hello")

    # the token lookup, the caller's memberships, the page
    assert len(queries) == 3


def test_snippets_are_plain_text_with_utf16_offsets():
    text, highlights = snippet("see <b>you</b> at the 🧗 wall, <mark>", ["wall"], substring=False)
    assert text == "see <b>you</b> at the 🧗 wall, <mark>"
    # the emoji is two UTF-16 units
    assert highlights == [[25, 29]]
    long = "word " * 40 + "target in the middle " + "word " * 40
    text, highlights = snippet(long, ["target"], substring=False)
    assert text.startswith("…") and text.endswith("…") and len(text) <= 122
    [[start, end]] = highlights
    assert text[start:end] == "target"
    assert snippet("Ropes ropes", ["rope"], substring=False)[1] == [[0, 4], [6, 10]]


@pytest.mark.django_db
def test_query_syntax_of_fts5_tsquery_and_like_is_text_over_http(team):
    alice, bob, carol, cid = team
    hit = send_message(alice, cid, 'rope AND "wall" NEAR 東京タワー')

    for q in ('"', "*", '"*', "AND", "NEAR(", "rope)", "(rope", "^rope", "content:rope", "'", ":*", "!", "&", "|",
              "%", "_", "\\", '東京"*', "東京タ*"):
        response = bob.client.get("/search/messages/", {"q": q})
        assert response.status_code == 200, (q, response.content)
    assert ids(search(bob, '"wall" AND* NEAR( rope)')) == [hit["id"]]
    assert ids(search(bob, "東京タ")) == [hit["id"]]
