from django.apps import AppConfig


def presence_worker(**kwargs):
    # Imported when the worker is started, not whenever Django is (paho and all).
    from accounts.workers import PresenceWorker

    return PresenceWorker(**kwargs)


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Registers the API schema's names for the token schemes (drf-spectacular).
        from accounts import push as account_push
        from accounts import schema  # noqa: F401
        from accounts.broker_auth import device_for_broker
        from chatserver import broker_auth, push, workers

        workers.register(name="presence", factory=presence_worker)
        push.register_builder(kind="friend_request", builder=account_push.build_friend_request)
        push.register_dead_token_handler(account_push.forget_dead_token)
        broker_auth.register_device_lookup(device_for_broker)
