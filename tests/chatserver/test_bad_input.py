"""Bad input is a 4xx in the error envelope, never a 500, on every endpoint.

What fuzzing found (tests/chatserver/test_fuzz.py runs schemathesis over the whole API),
fixed once where it belongs and tested here for every endpoint it can reach.
"""

import re

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import Device, User
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db

# 1,000 levels: past Python's recursion limit, which DRF's parser turned into a 500.
DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000


def json_operations() -> list[tuple[str, str]]:
    """Every (method, path template) of the API that takes a JSON body."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method, path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


def test_a_body_nested_too_deeply_is_a_malformed_body_on_every_endpoint():
    # given: a user, and every endpoint that parses JSON (ids in paths: the user's own)
    user = make_user()
    operations = json_operations()
    assert len(operations) >= 10
    users, devices, events = User.objects.count(), Device.objects.count(), OutboxEvent.objects.count()

    answers = {}
    for method, template in operations:
        path = re.sub(r"{user_id}", str(user.id), template)
        path = re.sub(r"{\w+}", "1", path)
        for body in (DEEP, DEEP_OBJECT):
            # when (signup and login ignore the token)
            response = getattr(user.client, method)(path, body, content_type="application/json")
            # then
            answers[(method, template, body[:1])] = (response.status_code, response.json()["error"]["code"])

    assert set(answers.values()) == {(400, "malformed_body")}
    assert (User.objects.count(), Device.objects.count(), OutboxEvent.objects.count()) == (users, devices, events)


@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/signup/"])
def test_the_unauthenticated_endpoints_refuse_a_deep_body_too(path):
    response = APIClient().post(path, DEEP, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {"error": {"code": "malformed_body", "message": "JSON parse error - nested too deeply."}}
    assert User.objects.count() == 0


@pytest.mark.parametrize("path, name", [("/accounts/?limit=", "limit"), ("/accounts/?offset=x", "offset"),
                                        ("/chats/{chat}/messages/?before=", "before")])
def test_an_empty_or_non_numeric_page_parameter_is_refused_naming_it(path, name):
    # given: a chat of the caller's, so that only the parameter can be wrong
    user, other = make_user(), make_user()
    chat = user.client.post("/chats/", {"members": [other.id]}, format="json").json()

    response = user.client.get(path.format(chat=chat["id"]))

    assert response.status_code == 400
    assert response.json() == {"error": {"code": "validation_error", "message": "Invalid input.",
                                         "fields": {name: ["A valid integer is required."]}}}


@pytest.mark.parametrize("chat_id", ["0", "00", str(2**63)])
def test_an_id_that_no_row_can_have_is_a_404_on_the_message_post(chat_id):
    # Ids start at 1 and end at BIGINT's largest: other numbers match no path (the send
    # builds its event before the write, and an event of chat 0 is no event).
    user = make_user()

    response = user.client.post(f"/chats/{chat_id}/messages/", {"content": "hi"}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
