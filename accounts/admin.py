"""The operators' admin for people and devices.

Nothing here changes an account's state by itself: deactivating goes through
`accounts.deletion.user_deactivate` and revoking a device through
`accounts.services.devices_sign_out`, so the outbox carries the DeviceRemove of every
device ended, as for a logout. Rows are never deleted from here (a user's messages would
lose their author, a device its broker account would outlive): deactivate instead.
"""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db import transaction
from django.db.models import Count

from accounts import deletion
from accounts.models import Device, User
from accounts.services import devices_sign_out
from chatserver import outbox
from chatserver.admin import apply_each


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ["id", "username", "display_name", "is_active", "is_staff", "devices", "date_joined", "deleted_at"]
    list_display_links = ["id", "username"]
    list_filter = ["is_active", "is_staff", ("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["username", "display_name"]
    ordering = ["-id"]
    actions = ["deactivate", "reactivate"]
    # `is_active` is read-only: the actions below are the way (they say what they did and
    # wait for the broker). Unticking it would still sign every device out (User.save).
    readonly_fields = [
        "is_active", "presence", "last_seen", "last_login", "date_joined", "deleted_at", "avatar", "avatar_thumbnail",
    ]
    fieldsets = [
        (None, {"fields": ["username", "password"]}),
        ("Profile", {"fields": ["display_name", "avatar", "avatar_thumbnail"]}),
        ("Settings", {"fields": ["read_receipts", "push_previews"]}),
        ("Status", {"fields": ["is_active", "deleted_at", "presence", "last_seen", "last_login", "date_joined"]}),
        ("Operator", {"fields": ["is_staff", "is_superuser"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(device_count=Count("devices"))

    @admin.display(description="devices", ordering="device_count")
    def devices(self, user: User) -> int:
        return user.device_count

    def has_add_permission(self, request) -> bool:
        # People sign up through the API (which also creates their broker account);
        # operators with `manage.py createsuperuser`.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Deactivate: sign every device out (HTTP and broker) and refuse logins")
    def deactivate(self, request, queryset):
        apply_each(self, request, queryset,
                   lambda user_id: deletion.user_deactivate(actor=request.user, user_id=user_id),
                   noun="user", done="deactivated")

    @admin.action(description="Reactivate: allow logins again")
    def reactivate(self, request, queryset):
        apply_each(self, request, queryset,
                   lambda user_id: deletion.user_reactivate(actor=request.user, user_id=user_id),
                   noun="user", done="reactivated")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "name", "created_at", "last_seen_at", "presence", "has_push_token"]
    list_select_related = ["user"]
    list_filter = ["presence"]
    search_fields = ["user__username", "name"]
    ordering = ["-id"]
    fields = ["user", "name", "created_at", "last_seen_at", "presence", "presence_expires_at", "has_push_token"]
    readonly_fields = fields
    actions = ["revoke"]

    @admin.display(boolean=True, description="push")
    def has_push_token(self, device: Device) -> bool:
        return device.push_token is not None

    def has_add_permission(self, request) -> bool:
        return False  # a device is a login

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        # Django's bulk "delete selected" would skip the broker: revoke is the one way.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Revoke: sign out (token, push token and broker account)", permissions=["delete"])
    def revoke(self, request, queryset):
        devices = list(queryset.order_by("id"))
        self._sign_out(devices)
        self.message_user(request, f"{len(devices)} device(s) signed out.")

    # The change page's "Delete" button revokes the same way.
    def delete_model(self, request, obj: Device) -> None:
        self._sign_out([obj])

    def delete_queryset(self, request, queryset) -> None:
        self._sign_out(queryset.order_by("id"))

    @staticmethod
    def _sign_out(devices) -> None:
        with transaction.atomic():
            event = devices_sign_out(devices=list(devices))
        if event is not None:
            outbox.wait_applied([event])
