"""How the API schema (drf-spectacular) names the two ways to send a device token.

Both authentication classes are TokenAuthentication subclasses, which drf-spectacular
would otherwise both call `tokenAuth` (a name collision it warns about).
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.DeviceTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            **build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Token"),
            "description": "`Authorization: Token <token>`: the token of signup or login (one per device).",
        }


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The same token as `Authorization: Bearer <token>`."}


# --- Examples, shown with the operations that take or return these shapes -------------

SESSION = {
    "id": 42,
    "username": "alice",
    "token": "0f8Jc2t1Rk3vXbq9aGm4Zl7yQhT5nW6sUeD1pVo8iK0",
    "display_name": "Alice",
    "avatar": {"url": "/accounts/42/avatar/?v=3", "thumbnail_url": "/accounts/42/avatar/thumbnail/?v=3"},
    "mqtt": {
        "host": "chat.example.org",
        "port": 1883,
        "ws_port": 9001,
        "tls_port": 8883,
        "wss_port": 9443,
        "plaintext": True,
        "username": "device-7",
        "password": "b6QzU0f0bXcS3yq1Yp0l9w",
        "client_id": "chat-42-7",
        "user_topic": "chat/users/42",
        "keepalive": 30,
    },
    "settings": {"read_receipts": True, "push_previews": True},
    "push": False,
}
ME = {key: value for key, value in SESSION.items() if key != "token"}
USER = {"id": 43, "username": "bob", "display_name": "Bob", "avatar": None, "presence": "online",
        "last_seen": "2026-12-01T09:30:00Z", "deleted": False}
DEVICE = {"id": 7, "name": "Pixel 8", "created_at": "2026-11-02T17:45:09Z", "last_seen_at": "2026-12-01T09:31:00Z",
          "current": True}
