"""Errors that services raise. They carry their HTTP status and a machine-readable code.

Services never import DRF: the exception handler turns these into the error envelope.
"""


class ApplicationError(Exception):
    status_code = 400
    code = "bad_request"
    message = "Bad request."

    def __init__(self, message: str | None = None, *, fields: dict | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.fields = fields


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class PermissionDenied(ApplicationError):
    status_code = 403
    code = "permission_denied"
    message = "You may not do this."


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"
    message = "This conflicts with the current state."


class NotYours(PermissionDenied):
    """A path names another user where only one's own is allowed (`/accounts/<id>/...`)."""

    code = "not_yours"
    message = "You can only see and change your own."
