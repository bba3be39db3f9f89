"""Schemathesis over every operation of the OpenAPI schema, as served at `/api/schema/`.

Each operation gets its documented examples, schemathesis's coverage cases (boundaries,
missing and wrong-typed fields) and a bounded number of generated ones, valid and invalid,
with a fixed seed, so a run is repeatable (about 40 s for all three ways in):

- anonymous: no token (or a made-up one): the open operations do their work, the others
  must say 401;
- signed in: a real token, ids as generated (nearly always somebody else's or nobody's,
  so the 403s and 404s);
- on the caller's own rows: a real token and the ids of its own chat, message and fellow
  member, so the operations that need existing rows get past their 404s.

Every check schemathesis has is on: no 5xx, every status, header and body as documented
(error codes included: each error response lists its codes as an enum), invalid input
refused, valid input accepted (or refused by a rule the schema cannot express: see
`_load`). Calls go to the WSGI application in this process, inside the test's
transaction. `pytest -m fuzz` selects these; `make test` runs them with the rest.
"""

from contextlib import contextmanager

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from schemathesis import GenerationMode

from accounts import services as account_services
from chatserver.wsgi import application
from tests.support.factories import PASSWORD, make_user

pytestmark = [pytest.mark.fuzz, pytest.mark.django_db]

# Per operation and way in: generated cases beyond the documented examples and the
# coverage cases (which are bounded by the schema, not by this number).
MAX_EXAMPLES = 25
# No example database either: a run replays nothing from an earlier one.
SEED = 20261201


def _load(modes: list[GenerationMode]):
    # From the application itself, when the module is collected (no database needed).
    loaded = schemathesis.openapi.from_wsgi("/api/schema/", application)
    loaded.config.generation.update(
        modes=modes, max_examples=MAX_EXAMPLES, database="none",
        # Unknown query parameters are ignored, as by most HTTP APIs (OpenAPI 3.0 cannot say
        # so), so sending one is no invalid request.
        allow_extra_parameters=False,
    )
    # Valid as far as a schema can say may still be refused by a rule it cannot express
    # (ids that exist, "content or deleted", a sync key that is a chat id): that is the
    # documented 400, not a bug. Everything else this check expects stays.
    loaded.config.checks.positive_data_acceptance.expected_statuses += ["400"]
    return loaded


schema = _load([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
# The caller's own rows replace generated ids, so only valid cases (an invalid id
# replaced by a real one would no longer be the invalid case it was generated as).
own_rows_schema = _load([GenerationMode.POSITIVE])


class Caller:
    """The signed-up user whose token the signed-in runs send (renewed after a logout)."""

    def __init__(self) -> None:
        self.user = make_user("fuzzer")
        self.token = self.user.token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def own_rows(self) -> dict[str, str]:
        """Path ids of rows the caller may touch: its own id, a chat of its own with a
        message in it, and another member of that chat (made once)."""
        if not hasattr(self, "_own_rows"):
            friend = make_user("fuzzfriend")
            client = self.user.client
            chat = client.post("/chats/", {"members": [friend.id], "name": "fuzz"}, format="json").json()
            message = client.post(f"/chats/{chat['id']}/messages/", {"content": "hi"}, format="json").json()
            self._own_rows = {"user_id": self.user.id, "chat_id": chat["id"], "message_id": message["id"],
                              "friend_id": friend.id, "blocked_id": friend.id}
        return {name: str(value) for name, value in self._own_rows.items()}

    def sign_in_again(self) -> None:
        _, self.token = account_services.user_login(username=self.user.username, password=PASSWORD)


@pytest.fixture
def caller() -> Caller:
    return Caller()


@contextmanager
def keeping_the_test_transaction():
    """What Django's test client does around each request: a request's start and end
    would otherwise close the connection, and with it the test's transaction (it sees
    autocommit off), so the next requests would write outside it."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@schema.parametrize()
@pytest.mark.parametrize("way_in", ["anonymous", "signed_in"])
@hypothesis.seed(SEED)
@hypothesis.settings(deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_answers_as_documented(case, way_in, caller):
    headers = caller.headers() if way_in == "signed_in" else None

    with keeping_the_test_transaction():
        case.call_and_validate(headers=headers)

    if headers and case.operation.path == "/accounts/logout/":
        caller.sign_in_again()


@own_rows_schema.parametrize()
@hypothesis.seed(SEED)
@hypothesis.settings(deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_on_the_caller_s_own_rows_answers_as_documented(case, caller):
    rows = caller.own_rows()
    if case.path_parameters:
        case.path_parameters = {name: rows.get(name, value) for name, value in case.path_parameters.items()}

    with keeping_the_test_transaction():
        case.call_and_validate(headers=caller.headers())

    if case.operation.path == "/accounts/logout/":
        caller.sign_in_again()
