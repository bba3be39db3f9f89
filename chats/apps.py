from django.apps import AppConfig


def preview_worker(**kwargs):
    # Imported when the worker is started, not whenever Django is.
    from chats.workers import PreviewWorker

    return PreviewWorker(**kwargs)


class ChatsConfig(AppConfig):
    name = "chats"

    def ready(self) -> None:
        from chats import push as chat_push
        from chats.selectors import chat_is_member
        from chatserver import broker_auth, push, workers

        push.register_builder(kind="message", builder=chat_push.build_message)
        push.register_builder(kind="read", builder=chat_push.build_read)
        push.register_builder(kind="invitation", builder=chat_push.build_invitation)
        push.register_builder(kind="reaction", builder=chat_push.build_reaction)
        workers.register(name="previews", factory=preview_worker)
        broker_auth.register_chat_member(lambda user_id, chat_id: chat_is_member(chat_id=chat_id, user_id=user_id))
