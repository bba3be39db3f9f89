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
