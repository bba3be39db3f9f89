from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """One unit of work for the relay, written in the transaction of the change it reports.

    The relay applies `access` (broker grants and revocations, in order), then publishes
    `payload` to `chat/users/<id>` for every id in `user_ids` and, when `chat_id` is set,
    to `chat/chats/<chat_id>`; once the broker has acknowledged all of it, the row is
    deleted. Rows are handled in id order; within a chat, ids follow commit order because
    every change to a chat locks the chat's row before it writes here.

    One row per change (not per recipient): fan-out happens in the relay, which keeps the
    write path as short for a 1,000-member group as for a direct chat.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    access = models.JSONField(default=list, blank=True)
    payload = models.TextField(blank=True)
    user_ids = models.JSONField(default=list, blank=True)
    chat_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "chat_outbox"

    def __str__(self) -> str:
        return f"outbox #{self.id}"


class RelayStatus(models.Model):
    """The relay's heartbeat: whether it is connected to the broker, and since when.

    A single row (id 1) that the relay refreshes every second or so; `/health/` and the
    request paths that wait for broker grants read it.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    broker_connected = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)

    class Meta:
        db_table = "chat_relay_status"
