"""One error envelope for every 4xx: {"error": {"code", "message", "fields"?}}.

Wraps DRF's handler (which also rolls back the request's transaction) and shapes what it
returns; ApplicationError from the services is turned into a DRF exception first.

The database being unreachable is not a bug but an outage: wherever it shows (a DRF view,
another view, a middleware, Django's connection health check at a request's first query),
the answer is 503 `database_unavailable` in the same envelope, never a 500 page.
"""

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from chatserver.errors import ApplicationError, ErrorCode

logger = logging.getLogger(__name__)


class _ApplicationAPIException(exceptions.APIException):
    def __init__(self, error: ApplicationError) -> None:
        self.status_code = error.status_code
        self.error = error
        # DRF's handler turns `wait` into Retry-After.
        self.wait = error.retry_after
        super().__init__(detail=error.message, code=error.code)


def _first_message(detail) -> str:
    """The first human-readable message found in a DRF error detail."""
    if isinstance(detail, dict):
        for value in detail.values():
            return _first_message(value)
        return ""
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else ""
    return str(detail)


# DRF's codes are kept where they are clear; a few get clearer names.
_CODE_NAMES = {
    "invalid": "validation_error",
    "not_authenticated": "not_authenticated",
    "authentication_failed": "invalid_token",
    "parse_error": "malformed_body",
    "unsupported_media_type": "unsupported_media_type",
    "method_not_allowed": "method_not_allowed",
    "throttled": "throttled",
    "not_found": "not_found",
    "permission_denied": "permission_denied",
}


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    error = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


# Django's wrappers of "cannot reach the database" (a refused or dropped connection).
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
DATABASE_UNAVAILABLE_MESSAGE = "The database is unavailable; try again shortly."
# Seconds a client is asked to wait (Retry-After) before trying again: a restarting
# PostgreSQL is back within a few, and nothing was written.
DATABASE_RETRY_AFTER = 2


def database_unavailable(exc: BaseException) -> JsonResponse:
    logger.warning("database unavailable: %s", " ".join(str(exc).split()))
    response = json_error(ErrorCode.DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE,
                          status.HTTP_503_SERVICE_UNAVAILABLE)
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


def exception_handler(exc, context):
    if isinstance(exc, DATABASE_UNAVAILABLE):
        logger.warning("database unavailable: %s", " ".join(str(exc).split()))
        set_rollback()
        return Response(
            error_body(ErrorCode.DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )

    if isinstance(exc, ApplicationError):
        api_exc = _ApplicationAPIException(exc)
        response = drf_exception_handler(api_exc, context)
        response.data = error_body(exc.code, exc.message, exc.fields)
        return response

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # Django turns it into a logged 500.

    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        if isinstance(detail, dict):
            fields = detail
        else:
            fields = {"non_field_errors": detail if isinstance(detail, list) else [detail]}
        response.data = error_body("validation_error", "Invalid input.", fields)
        return response

    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
    code = codes if isinstance(codes, str) else "error"
    code = _CODE_NAMES.get(code, code)
    message = _first_message(getattr(exc, "detail", "")) or "Error."
    response.data = error_body(code, message)
    return response


def json_error(code: str, message: str, status_code: int) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status_code)


def handler404(request, exception=None):
    return json_error("not_found", "No such endpoint.", status.HTTP_404_NOT_FOUND)


def handler400(request, exception=None):
    return json_error("bad_request", "Bad request.", status.HTTP_400_BAD_REQUEST)


def handler403(request, exception=None):
    return json_error("permission_denied", "Forbidden.", status.HTTP_403_FORBIDDEN)


def handler500(request):
    # Called by Django while it handles the exception: outages raised outside any view
    # (a middleware, the connection health check) still answer 503.
    exc = sys.exception()
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return database_unavailable(exc)
    return json_error("server_error", "Internal server error.", status.HTTP_500_INTERNAL_SERVER_ERROR)

