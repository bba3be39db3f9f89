import hashlib
import secrets

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.validators import ASCIIUsernameValidator
from django.db import models, transaction
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac

from chatserver.broker_access import device_client_id, device_username


class UsernameValidator(ASCIIUsernameValidator):
    regex = r"^[A-Za-z0-9_.-]{3,32}\Z"
    message = "3 to 32 characters: letters, digits, '.', '_' or '-'."


class User(AbstractUser):
    class Presence(models.TextChoices):
        ONLINE = "online"
        AWAY = "away"
        OFFLINE = "offline"

    username = models.CharField(max_length=32, unique=True, validators=[UsernameValidator()])
    presence = models.CharField(max_length=8, choices=Presence, default=Presence.OFFLINE)
    last_seen = models.DateTimeField(null=True, blank=True)
    # Off: the user's read pointer still drives its own unread counts, but nobody else
    # sees it (no read.updated to others, counted as unread in per-message counts).
    read_receipts = models.BooleanField(default=True)
    # Off: pushes to the user's phones say who wrote in which chat, not what.
    push_previews = models.BooleanField(default=True)
    # What people see instead of the username when set ("" when not).
    display_name = models.CharField(max_length=64, blank=True)
    # Storage names of the avatar (re-encoded by the server) and its thumbnail; "" when
    # none (accounts.services.user_avatar_set).
    avatar = models.CharField(max_length=255, blank=True)
    avatar_thumbnail = models.CharField(max_length=255, blank=True)
    # Set when the person deleted the account: the row stays, anonymised and inactive, so
    # the messages it wrote keep an author ("Deleted user"); see accounts.deletion.
    deleted_at = models.DateTimeField(null=True, blank=True)

    def save(self, *args, **kwargs) -> None:
        """Save; an inactive user keeps no device.

        Saving a user inactive (an operator's action, account deletion, or a plain
        `user.is_active = False; user.save()` in a shell, a script or a future view) signs
        out whatever devices it still has, in the same transaction, through
        `accounts.services.devices_sign_out`: their HTTP and push tokens end at commit and
        the outbox carries one DeviceRemove per device, which the relay applies in the
        outbox's order, as for a logout. Nothing waits for the broker here (a save may be
        part of a larger transaction); `accounts.deletion.user_deactivate` does.

        Here, not in a signal (the house has none) nor only in the services: the rule
        is the model's, whatever path sets the flag. What a save never sees
        (`QuerySet.update`, raw SQL) is caught by the presence worker's sweep
        (`accounts.services.inactive_devices_sign_out`) within seconds.
        """
        update_fields = kwargs.get("update_fields")
        if self.is_active or self.pk is None or (update_fields is not None and "is_active" not in update_fields):
            super().save(*args, **kwargs)
            return
        # accounts.services imports this module.
        from accounts.services import devices_sign_out

        with transaction.atomic():
            super().save(*args, **kwargs)
            # The user row is locked by the UPDATE, then its devices: the order of
            # user_deactivate and of a racing login (user_login).
            devices_sign_out(devices=Device.objects.select_for_update().filter(user_id=self.pk).order_by("id"))

    class Meta:
        constraints = [
            # "Alice" and "alice" are one name: nobody can pass for somebody else by case.
            models.UniqueConstraint(Lower("username"), name="accounts_user_username_ci_unique"),
        ]
        indexes = [
            # The few inactive users, for the presence worker's sweep every few seconds
            # (accounts.services.inactive_devices_sign_out): no scan of every user.
            models.Index(fields=["id"], condition=models.Q(is_active=False), name="accounts_user_inactive_idx"),
        ]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Device(models.Model):
    """One login: its own HTTP token and its own MQTT account.

    Only a hash of the token is stored, so a copy of the database lets nobody act as a
    user. The MQTT password is derived from that hash and SECRET_KEY, so it is never
    stored either and the broker's accounts can be rebuilt from the database.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="devices")
    token_hash = models.CharField(max_length=64, unique=True)
    # The device_name of login, else the client's User-Agent (what the device list shows).
    name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The last authenticated request, to the minute (DeviceTokenAuthentication).
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # The phone's FCM registration token, if it registered one: where pushes go while it
    # has no live MQTT connection. A token belongs to one device at a time (unique).
    push_token = models.CharField(max_length=1024, null=True, blank=True, unique=True)
    # What the device last reported on its presence topic (`User.Presence`), as the
    # presence worker saw it, and until when that holds without a refresh: a device that
    # stops refreshing is offline from then on, even if nobody noticed it going.
    presence = models.CharField(max_length=8, choices=User.Presence, default=User.Presence.OFFLINE)
    presence_expires_at = models.DateTimeField(null=True, blank=True)

    @staticmethod
    def connected_q(*, now) -> models.Q:
        """The devices with a live MQTT connection, as far as the server knows: a state
        other than offline that has not run out."""
        return models.Q(presence_expires_at__gt=now) & ~models.Q(presence=User.Presence.OFFLINE)

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(32)

    @property
    def mqtt_username(self) -> str:
        return device_username(self.pk)

    @property
    def mqtt_client_id(self) -> str:
        # The broker knows whose session a queue is from its name (RabbitAccess).
        return device_client_id(self.user_id, self.pk)

    @property
    def mqtt_password(self) -> str:
        return salted_hmac(
            "accounts.Device.mqtt_password", self.token_hash, algorithm="sha256"
        ).hexdigest()

    def __str__(self) -> str:
        return f"device {self.pk} of user {self.user_id}"


class FriendRequest(models.Model):
    """A pending request from one user to another; accepted, it becomes a Friendship."""

    from_user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    to_user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["from_user", "to_user"], name="accounts_friendrequest_unique"),
        ]
        indexes = [models.Index(fields=["to_user", "from_user"], name="accounts_friendreq_to_idx")]


class Friendship(models.Model):
    """One row per direction (a friendship is two rows), so "my friends" is one index scan."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+", db_index=False)
    friend = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "friend"], name="accounts_friendship_unique"),
        ]


class Block(models.Model):
    """`user` blocked `blocked`."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+", db_index=False)
    blocked = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "blocked"], name="accounts_block_unique"),
        ]


class RetiredUsername(models.Model):
    """A username of a deleted account, kept so that nobody can take it and pass for the
    person the others knew: such names are never free again. Only a hash of the name
    (lower case) is kept, so the list says nothing about who was here."""

    name_hash = models.CharField(max_length=64, unique=True)
    retired_at = models.DateTimeField(default=timezone.now)

    @staticmethod
    def hash(username: str) -> str:
        return hashlib.sha256(username.lower().encode()).hexdigest()
