"""Stored files served to clients: the one way uploads (attachments, avatars) leave the
storage (Django's `default_storage`: disk or S3)."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse


def stored_file_response(name: str, *, content_type: str, missing: type[Exception], max_age: int) -> FileResponse:
    """The stored file `name` as a response, hardened for user content: never sniffed
    into another type, never run as a page (a sandboxed CSP), cached privately for
    `max_age` seconds. `missing` (an exception class) is raised when there is no such
    file, or no name at all."""
    if not name:
        raise missing()
    try:
        handle = default_storage.open(name, "rb")
    except FileNotFoundError:
        raise missing() from None
    response = FileResponse(handle, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = f"private, max-age={max_age}"
    return response
