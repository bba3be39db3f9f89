from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Registers the API schema's names for the token schemes (drf-spectacular).
        from accounts import schema  # noqa: F401
