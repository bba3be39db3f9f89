"""The API schema's error responses: every operation documents each status it can answer
with, in the one envelope, with the codes it can carry and an example of each.

Two sources, merged per status:

- what the view's kind implies, found by `AutoSchema` itself: 401 (`not_authenticated`,
  `invalid_token`) unless the view is open; 400 (`validation_error`, `malformed_body`,
  `bad_request`) and 415 for a body; 400 `validation_error` for a query serializer
  (`extend_schema(parameters=[SomeQuery])`); 404 `not_found` for a path with ids (an id
  beyond 64 bits is no such endpoint); 429 `throttled` (with `Retry-After`) when the view
  has throttles; 503 `database_unavailable` everywhere;
- what its services refuse, declared on the view method with `@raises(ChatNotFound, ...)`:
  `ApplicationError` classes, whose status, code and message make the entry.

Each response's schema lists its codes as an enum, so a test (or schemathesis) that gets a
code the operation does not document fails. drf-spectacular is extended by overriding
`_get_response_bodies`, the one place it builds responses (drf-spectacular is pinned).

Infrastructure: imports no app; apps pass their own error classes to `raises`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent, is_serializer
from rest_framework.mixins import ListModelMixin
from rest_framework.permissions import AllowAny

from chatserver.errors import ApplicationError, ErrorCode
from chatserver.exception_handler import DATABASE_UNAVAILABLE_MESSAGE

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Refusal:
    """One documented error: its status, code, and an example of its body."""

    status: int
    code: str
    message: str
    fields: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", str(self.code))  # a StrEnum member: its plain value

    @classmethod
    def of(cls, error: type[ApplicationError]) -> Refusal:
        try:
            instance = error()  # the message (and fields) it really answers with
        except TypeError:  # one that needs arguments: its class defaults
            return cls(error.status_code, error.code, error.message)
        return cls(error.status_code, error.code, instance.message, instance.fields)

    def example(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


def raises(*errors: type[ApplicationError] | Refusal) -> Callable[[F], F]:
    """Document the errors a view method answers besides those of its kind (see the
    module's docstring). Stack it with `extend_schema`, in either order."""

    def decorate(method: F) -> F:
        method._documented_errors = (*getattr(method, "_documented_errors", ()), *errors)  # type: ignore[attr-defined]
        return method

    return decorate


NOT_AUTHENTICATED = Refusal(401, ErrorCode.NOT_AUTHENTICATED, "Authentication credentials were not provided.")
INVALID_TOKEN = Refusal(401, ErrorCode.INVALID_TOKEN, "Invalid or revoked token.")
MALFORMED_BODY = Refusal(400, ErrorCode.MALFORMED_BODY, "JSON parse error - Expecting value: line 1 column 1 (char 0)")
BODY_TOO_LARGE = Refusal(400, ErrorCode.BAD_REQUEST, "Bad request.")
UNSUPPORTED_MEDIA_TYPE = Refusal(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, 'Unsupported media type "text/plain" in request.')
NO_SUCH_ENDPOINT = Refusal(404, ErrorCode.NOT_FOUND, "No such endpoint.")
THROTTLED = Refusal(429, ErrorCode.THROTTLED, "Request was throttled. Expected available in 2 seconds.")
DATABASE_DOWN = Refusal(503, ErrorCode.DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE)

_STATUS_TEXT = {
    400: "The request is invalid.",
    401: "No valid token, or (login) wrong credentials.",
    403: "Refused: the caller may not do this.",
    404: "Not found (or not the caller's to see).",
    409: "Conflicts with the current state.",
    413: "The upload is too large.",
    415: "The body's Content-Type is not accepted here.",
    429: "Too many requests: wait `Retry-After` seconds.",
    503: "Unavailable for now (the database, or for a message delivery running late): wait `Retry-After` seconds.",
}

# `fields` of a validation_error: each invalid field's messages, or for a field holding
# a list or a map, the same shape again per invalid item.
ERROR_FIELDS_SCHEMA = {
    "type": "object",
    "description": "Only on `validation_error`: each invalid field's messages "
    "(`non_field_errors`: the body as a whole); a list or map field nests them by index or key.",
    "additionalProperties": {
        "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object", "additionalProperties": True}]
    },
}


def error_schema(codes: Iterable[str], fields_ref: dict | None = None) -> dict:
    """The envelope `{"error": {"code", "message", "fields"?}}` with these codes only
    (`fields` as `fields_ref`, a `$ref` to `ERROR_FIELDS_SCHEMA`, or inline)."""
    return {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "enum": sorted(set(codes))},
                    "message": {"type": "string", "description": "For people; `code` is for programs."},
                    "fields": fields_ref or ERROR_FIELDS_SCHEMA,
                },
                "required": ["code", "message"],
                "additionalProperties": False,
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    }


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's, with every operation's error responses (module docstring)."""

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        by_status: dict[int, dict[str, Refusal]] = {}
        # Generic first: a declared refusal with the same code replaces its example.
        for refusal in [*self._implied_refusals(), *self._declared_refusals()]:
            by_status.setdefault(refusal.status, {})[refusal.code] = refusal
        for status, refusals in sorted(by_status.items()):
            if str(status) in responses:  # documented by the view itself (e.g. /health/'s 503)
                continue
            responses[str(status)] = self._error_response(status, list(refusals.values()))
        return responses

    def _get_request_body(self, direction="request"):
        # drf-spectacular documents bodies of POST, PUT and PATCH only; a DELETE that
        # declares one (`extend_schema(request=...)`, e.g. a password to confirm it) has it
        # documented too, built the same way.
        if self.method != "DELETE" or not self._deletes_with_body():
            return super()._get_request_body(direction)
        self.method = "POST"
        try:
            return super()._get_request_body(direction)
        finally:
            self.method = "DELETE"

    def _deletes_with_body(self) -> bool:
        # Only a declared body counts: no guessing from the view (which, for an APIView,
        # drf-spectacular reports as an error).
        self._declared_only = True
        try:
            return is_serializer(self.get_request_serializer())
        finally:
            self._declared_only = False

    def _get_serializer(self):
        if getattr(self, "_declared_only", False):
            return None
        return super()._get_serializer()

    def _declared_refusals(self) -> list[Refusal]:
        method = getattr(self.view, self.method.lower(), None)
        return [
            error if isinstance(error, Refusal) else Refusal.of(error)
            for error in getattr(method, "_documented_errors", ())
        ]

    def _implied_refusals(self) -> list[Refusal]:
        refusals = []
        if not self._is_open():
            refusals += [NOT_AUTHENTICATED, INVALID_TOKEN]
        has_body = self.method in ("POST", "PUT", "PATCH") or (self.method == "DELETE" and self._deletes_with_body())
        request = self.get_request_serializer() if has_body else None
        if request is not None:
            refusals += [self._validation_error(request), MALFORMED_BODY, BODY_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE]
        for parameter in self.get_override_parameters():
            if is_serializer(parameter):
                refusals.append(self._validation_error(parameter))
        if isinstance(self.view, ListModelMixin) and self.view.pagination_class is not None:
            refusals.append(Refusal(400, ErrorCode.VALIDATION_ERROR, "Invalid input.",
                                    {"limit": ["Ensure this value is less than or equal to 200."]}))
        if "{" in self.path:
            refusals.append(NO_SUCH_ENDPOINT)
        # Throttles that count only some methods (chatserver.throttling: the writes) do
        # not make the others answer 429.
        if any(self.method in getattr(t, "methods", {self.method}) for t in self.view.get_throttles()):
            refusals.append(THROTTLED)
        refusals.append(DATABASE_DOWN)
        return refusals

    def _is_open(self) -> bool:
        return all(isinstance(p, AllowAny) for p in self.view.get_permissions())

    @staticmethod
    def _validation_error(serializer) -> Refusal:
        fields = getattr(serializer, "fields", None) if not isinstance(serializer, type) else serializer().fields
        name = next(iter(fields), "non_field_errors") if fields else "non_field_errors"
        return Refusal(400, ErrorCode.VALIDATION_ERROR, "Invalid input.", {name: ["This field is required."]})

    def _error_response(self, status: int, refusals: list[Refusal]) -> dict:
        codes = ", ".join(f"`{r.code}`" for r in refusals)
        # `fields` once, as a component; each response's enum of codes inline.
        fields = ResolvedComponent(
            name="ErrorFields", type=ResolvedComponent.SCHEMA, object="ErrorFields", schema=ERROR_FIELDS_SCHEMA
        )
        self.registry.register_on_missing(fields)
        response = {
            "description": f"{_STATUS_TEXT.get(status, 'Error.')} Codes: {codes}.",
            "content": {
                "application/json": {
                    "schema": error_schema((r.code for r in refusals), fields.ref),
                    "examples": {r.code: {"value": r.example(), "summary": r.message} for r in refusals},
                }
            },
        }
        if status in (429, 503):
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before trying again."}
            }
        return response
