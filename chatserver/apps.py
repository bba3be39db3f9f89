from django.apps import AppConfig


def push_worker(**kwargs):
    from chatserver.push_worker import PushWorker

    return PushWorker(**kwargs)


def relay(**kwargs):
    # Imported when the worker is started, not whenever Django is (paho and all).
    from chatserver.relay import Relay

    return Relay(**kwargs)


class ChatserverConfig(AppConfig):
    name = "chatserver"
    verbose_name = "Chat server plumbing (outbox, relay, workers)"

    def ready(self) -> None:
        from chatserver import workers

        workers.register(name="relay", factory=relay)
        workers.register(name="push", factory=push_worker)
