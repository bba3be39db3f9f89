"""Errors that services raise. They carry their HTTP status and a machine-readable code.

Services never import DRF: the exception handler turns these into the error envelope
`{"error": {"code", "message", "fields"?}}`. Every code a client can get is a member of
one `StrEnum`: the generic ones below, and each app's own in its `errors.py`
(`accounts.errors.AccountsErrorCode`, `chats.errors.ChatsErrorCode`). No code is in two
enums, and docs/http-api.md lists them all (tests/chatserver/test_errors.py checks both).
"""

from enum import StrEnum, unique


@unique
class ErrorCode(StrEnum):
    """Codes of the envelope that belong to no app: the request's shape, authentication,
    limits, and the generic refusals."""

    BAD_REQUEST = "bad_request"
    VALIDATION_ERROR = "validation_error"
    MALFORMED_BODY = "malformed_body"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    NOT_AUTHENTICATED = "not_authenticated"
    INVALID_TOKEN = "invalid_token"
    THROTTLED = "throttled"
    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    CONFLICT = "conflict"
    NOT_YOURS = "not_yours"
    DATABASE_UNAVAILABLE = "database_unavailable"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"


class FrontErrorCode(StrEnum):
    """Codes only the front server answers with (front/nginx.conf), for requests that never
    reach Django; it also answers `bad_request`, `not_found` and `payload_too_large`."""

    REQUEST_TIMEOUT = "request_timeout"
    LENGTH_REQUIRED = "length_required"
    URI_TOO_LONG = "uri_too_long"
    HEADER_TOO_LARGE = "header_too_large"
    UNAVAILABLE = "unavailable"


class ApplicationError(Exception):
    status_code = 400
    code: StrEnum = ErrorCode.BAD_REQUEST
    message = "Bad request."
    # Seconds the client is asked to wait before trying again (a Retry-After header), if any.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, fields: dict | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.fields = fields


class InvalidInput(ApplicationError):
    """Input a serializer could not judge (it needs the database): one field's error, in
    the same envelope as DRF's validation errors."""

    code = ErrorCode.VALIDATION_ERROR
    message = "Invalid input."

    def __init__(self, field: str | None = None, message: str | None = None, *, fields: dict | None = None) -> None:
        super().__init__(fields=fields if fields is not None else {field: [message]})


class NotFound(ApplicationError):
    status_code = 404
    code = ErrorCode.NOT_FOUND
    message = "Not found."


class PermissionDenied(ApplicationError):
    status_code = 403
    code = ErrorCode.PERMISSION_DENIED
    message = "You may not do this."


class Conflict(ApplicationError):
    status_code = 409
    code = ErrorCode.CONFLICT
    message = "This conflicts with the current state."


class NotYours(PermissionDenied):
    """A path names another user where only one's own is allowed (`/accounts/<id>/...`)."""

    code = ErrorCode.NOT_YOURS
    message = "You can only see and change your own."


class Overloaded(ApplicationError):
    """Delivery is behind (chatserver/backpressure.py): try again after `retry_after`."""

    status_code = 503
    code = ErrorCode.OVERLOADED
    message = "Messages are being delivered late; send this one again shortly."
    retry_after = 2
