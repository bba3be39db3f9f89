from django.apps import AppConfig


def presence_worker(**kwargs):
    # Imported when the worker is started, not whenever Django is (paho and all).
    from accounts.workers import PresenceWorker

    return PresenceWorker(**kwargs)


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Registers the API schema's names for the token schemes (drf-spectacular).
        from accounts import schema  # noqa: F401
        from chatserver import workers

        workers.register(name="presence", factory=presence_worker)
