"""The operators' admin for chats, members and messages: read-only, but for soft-deleting
messages, which goes through `chats.services.message_edit.message_moderate` (members get
`message.updated`, as when the author deletes it)."""

from django.contrib import admin
from django.db.models import Count

from chats.models import Chat, Membership, Message
from chats.services.message_edit import message_moderate
from chatserver.admin import ReadOnly, apply_each


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ["user", "role", "joined_at", "last_read_seq", "last_delivered_seq"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["joined_at", "id"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Chat)
class ChatAdmin(ReadOnly):
    list_display = ["id", "kind", "name", "members", "last_seq", "version", "created_at", "activity_at"]
    list_filter = ["kind"]
    search_fields = ["name", "=id"]
    ordering = ["-activity_at"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description="members", ordering="member_count")
    def members(self, chat: Chat) -> int:
        return chat.member_count


@admin.register(Membership)
class MembershipAdmin(ReadOnly):
    list_display = ["id", "chat", "user", "role", "joined_at"]
    list_select_related = ["chat", "user"]
    list_filter = ["role"]
    search_fields = ["user__username", "=chat__id"]
    ordering = ["-id"]


@admin.register(Message)
class MessageAdmin(ReadOnly):
    list_display = ["id", "chat", "seq", "author", "type", "preview", "created_at", "deleted"]
    list_select_related = ["chat", "author"]
    list_filter = ["deleted", "type"]
    search_fields = ["=chat__id", "author__username"]
    ordering = ["-id"]
    actions = ["soft_delete"]
    # Every row's full content is not needed to find one: the list shows a preview.
    show_full_result_count = False

    @admin.display(description="content")
    def preview(self, message: Message) -> str:
        return message.content[:80]

    @admin.action(description="Soft-delete (members get message.updated)")
    def soft_delete(self, request, queryset):
        apply_each(self, request, queryset,
                   lambda message_id: message_moderate(actor=request.user, message_id=message_id),
                   noun="message", done="deleted")
