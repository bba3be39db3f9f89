"""503 `database_unavailable` wherever an outage shows in a request (the real database is
stopped in tests/test_outages.py; here, the paths that need no database at all)."""

import json

import pytest
from django.db import OperationalError
from django.test import Client
from django.test.client import RequestFactory

from chatserver.exception_handler import handler500
from chatserver.middleware import DatabaseUnavailableMiddleware

UNAVAILABLE = {"error": {"code": "database_unavailable", "message": "The database is unavailable; try again shortly."}}


class DatabaseDownMiddleware:
    """Stands for any middleware that queries the database and finds it gone."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")


def test_a_middleware_finding_the_database_gone_answers_503_in_the_envelope(settings):
    # given
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.DatabaseDownMiddleware"]

    # when
    response = Client(raise_request_exception=False).get("/health/")

    # then
    assert (response.status_code, json.loads(response.content)) == (503, UNAVAILABLE)


def test_a_view_finding_the_database_gone_answers_503_and_other_errors_are_left_alone():
    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    request = RequestFactory().get("/")

    response = middleware.process_exception(request, OperationalError("server closed the connection"))

    assert (response.status_code, json.loads(response.content)) == (503, UNAVAILABLE)
    assert middleware.process_exception(request, ValueError("a bug")) is None


@pytest.mark.parametrize(
    "error, status, code",
    [(OperationalError("gone"), 503, "database_unavailable"), (ValueError("a bug"), 500, "server_error")],
)
def test_the_500_handler_tells_an_outage_from_a_bug(error, status, code):
    request = RequestFactory().get("/")
    try:
        raise error
    except Exception:
        response = handler500(request)

    assert (response.status_code, json.loads(response.content)["error"]["code"]) == (status, code)
