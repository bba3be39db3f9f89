"""The operators' admin for the outbox: what is queued and what was set aside, read-only
(replaying or discarding dead letters is `manage.py outbox_dead_letters`, where the
operator sees what it does)."""

from django.contrib import admin

from chatserver.models import DeadLetter, OutboxEvent


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnly):
    list_display = ["id", "outbox_id", "created_at", "failed_at", "chat_id", "error"]
    search_fields = ["error", "=chat_id"]
    ordering = ["-id"]


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnly):
    """What the relay has not applied yet: a list that grows says the relay or the broker
    is stuck (see /health/)."""

    list_display = ["id", "created_at", "chat_id", "payload"]
    ordering = ["id"]
    show_full_result_count = False
