"""The chats app's rate limits (rates in settings.REST_FRAMEWORK, chatserver/throttling.py)."""

from chatserver.throttling import UserThrottle


class SendThrottle(UserThrottle):
    """Every message POST, per user."""

    scope = "send"


class UploadThrottle(UserThrottle):
    """Message POSTs that carry a file, per user (counted on top of `SendThrottle`)."""

    scope = "upload"

    def applies(self, request, view) -> bool:
        return request.method == "POST" and request.content_type.startswith("multipart/")
