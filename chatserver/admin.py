"""The operators' admin for the outbox: what is queued and what was set aside, read-only
(replaying or discarding dead letters is `manage.py outbox_dead_letters`, where the
operator sees what it does)."""

from collections.abc import Callable

from django.contrib import admin, messages

from chatserver.errors import ApplicationError
from chatserver.models import DeadLetter, OutboxEvent


class ReadOnly(admin.ModelAdmin):
    """Rows that change through the services only (versions, events, broker grants):
    the admin shows them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def apply_each(model_admin: admin.ModelAdmin, request, queryset, service: Callable[[int], object], *,
               noun: str, done: str) -> None:
    """An admin action: `service(id)` for every selected row, in id order; a refusal
    (ApplicationError) is reported for its row and the others go on; then a count."""
    count = 0
    for row_id in queryset.order_by("id").values_list("id", flat=True):
        try:
            service(row_id)
            count += 1
        except ApplicationError as exc:
            model_admin.message_user(request, f"{noun.capitalize()} {row_id}: {exc.message}", messages.ERROR)
    model_admin.message_user(request, f"{count} {noun}(s) {done}.")


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
