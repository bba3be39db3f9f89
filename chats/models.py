from datetime import UTC, datetime

from django.conf import settings
from django.db import models
from django.db.models import Q, Value
from django.utils import timezone


class Chat(models.Model):
    class Kind(models.TextChoices):
        DIRECT = "direct"
        GROUP = "group"

    kind = models.CharField(max_length=8, choices=Kind)
    name = models.CharField(max_length=100, blank=True)
    # "<lower user id>:<higher user id>" for a direct chat: the pair's chat exists once.
    direct_key = models.CharField(max_length=41, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The seq of the newest message; bumped under the row lock, so seqs have no gap.
    last_seq = models.BigIntegerField(default=0)
    # Newest message or creation: orders a user's chat list.
    activity_at = models.DateTimeField(default=timezone.now)
    # Bumped by every change to the chat (message sent, edited or deleted, member added,
    # removed or changed, chat renamed), under the row lock: a gapless per-chat change
    # counter. Events carry it and /sync/ returns what changed after a given one.
    version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.kind} chat {self.pk}"


# `muted_until` of a chat muted for good: far enough to never come, and still a plain time
# for clients that compare it with their clock.
MUTED_FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"
        RESTRICTED = "restricted"  # reads, cannot post

    # No separate index on chat: the (chat, user) unique index serves chat lookups.
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role, default=Role.MEMBER)
    joined_at = models.DateTimeField(default=timezone.now)
    # chat.last_seq when the user joined: later messages are the ones it can have unread.
    joined_seq = models.BigIntegerField(default=0)
    # The read and delivered pointers: never move back; reading implies delivery.
    last_read_seq = models.BigIntegerField(default=0)
    last_read_message = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    last_delivered_seq = models.BigIntegerField(default=0)
    last_delivered_message = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    # A direct chat "deleted" by this member: hidden from its list until a message newer
    # than this seq arrives (the pair's chat itself stays, unique).
    hidden_at_seq = models.BigIntegerField(null=True, blank=True)
    # No pushes for this chat until then (MUTED_FOREVER: for good); MQTT delivery and
    # unread counts are not affected. Seen by the member only.
    muted_until = models.DateTimeField(null=True, blank=True)

    # --- pins and archive (the member's own list; seen by the member only) ---
    # Pinned chats come first in the member's list, the latest pinned first (at most
    # `chats.errors.PINNED_CHATS_MAX`).
    pinned_at = models.DateTimeField(null=True, blank=True)
    # Archived at this chat.last_seq: out of the list (and in `?archived=true`) until a
    # newer message arrives, unless the chat is muted then (a muted archived chat stays
    # archived). Nothing is written when the message arrives: the list compares seqs.
    archived_at_seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chat", "user"], name="chats_membership_chat_user_unique"),
        ]


class Message(models.Model):
    class Type(models.TextChoices):
        TEXT = "text"
        IMAGE = "image"
        AUDIO = "audio"
        VIDEO = "video"
        FILE = "file"
        INVITE = "invite"

    # No separate index on chat: (chat, seq) and (chat, version) serve every chat lookup.
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="messages", db_index=False)
    seq = models.BigIntegerField()
    # No index on author: nothing reads messages by author, and users are deactivated
    # rather than deleted.
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="messages",
        db_index=False,
    )
    type = models.CharField(max_length=8, choices=Type, default=Type.TEXT)
    content = models.TextField()
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    # Chosen by the sending device; the same one again returns the first message.
    client_id = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted = models.BooleanField(default=False)
    # The chat's version when this message last changed (sent, edited, deleted, reacted to).
    version = models.BigIntegerField(default=0)
    # The broadcast summary of its reactions, `[{emoji, count, user_ids}]` (the `Reaction`
    # rows are the truth; this is rebuilt from them under the chat's lock on every change),
    # so that reading messages costs no query for them. Defaults in the database too: the
    # send's statement (chats/send_sql.py) does not name it.
    reactions = models.JSONField(default=list, db_default=Value("[]"))
    # The user ids this message mentions (`@username`, `@all`), kept with it for the API;
    # `Mention` rows count them per reader.
    mentions = models.JSONField(default=list, db_default=Value("[]"))
    # The preview of its first http(s) link, `{url, title, description, image}`, set by the
    # `previews` worker (chats/previews.py) after the send or an edit; null without one.
    # (Search: GIN indexes on to_tsvector('simple', content) and on content's trigrams,
    # made by migration 0004 in SQL on PostgreSQL; FTS5 tables kept by triggers, made by
    # migration 0006 on SQLite: see chats/search.py.)
    link_preview = models.JSONField(null=True, blank=True)

    # --- pins, forwards, invitations ---
    # Pinned in its chat (by an admin or the owner of a group, by either member of a
    # direct chat); deleting the message unpins it.
    pinned_at = models.DateTimeField(null=True, blank=True)
    pinned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        db_index=False,
    )
    # A forward: its content and file are the original's. `forwarded_from` is the original
    # message's author (the first one's, for a forward of a forward), never its chat. The
    # send's statement does not name these: they default in the database too.
    forwarded = models.BooleanField(default=False, db_default=False)
    forwarded_from = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        db_index=False,
    )
    # An invitation (type `invite`): `{title, url, expires_at}` and the broadcast summary
    # of its answers (the `InviteAnswer` rows are the truth, rebuilt under the chat's lock).
    invite = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chat", "seq"], name="chats_message_chat_seq_unique"),
            models.UniqueConstraint(
                fields=["chat", "author", "client_id"],
                condition=Q(client_id__isnull=False),
                name="chats_message_client_id_unique",
            ),
        ]
        indexes = [
            # Catch-up: what changed in a chat after a version.
            models.Index(fields=["chat", "version"], name="chats_message_chat_version_idx"),
            # Unread counts subtract deleted messages: few, so a small partial index.
            models.Index(
                fields=["chat", "seq"], condition=Q(deleted=True), name="chats_message_deleted_idx"
            ),
            # A chat's pins (the list, the cap): few, so a small partial index.
            models.Index(
                fields=["chat", "pinned_at"], condition=Q(pinned_at__isnull=False), name="chats_message_pinned_idx"
            ),
        ]


class Attachment(models.Model):
    """The file of a media message, stored through Django's storage API."""

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="attachment")
    # Storage names, chosen by the server (chats.media.store).
    file = models.CharField(max_length=255)
    thumbnail = models.CharField(max_length=255, blank=True)
    mime = models.CharField(max_length=100)
    size = models.BigIntegerField()
    # The client's file name, for display and downloads only.
    name = models.CharField(max_length=200)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)


class Reaction(models.Model):
    """One user's emoji on one message (at most one of each emoji per user and message)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    emoji = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Also the index that reads a message's reactions.
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="chats_reaction_unique"),
        ]


class Mention(models.Model):
    """A member mentioned by a message: `mention_count` in the chat list counts the rows
    after the reader's read pointer. Deleted messages have none (deleting removes them)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    # The message's, copied: counting after a read pointer is a range scan of one index.
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="+", db_index=False)
    seq = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user"], name="chats_mention_unique"),
        ]
        indexes = [models.Index(fields=["user", "chat", "seq"], name="chats_mention_unread_idx")]


# --- invitations ---


class InviteAnswer(models.Model):
    """One member's answer to an invitation: one per member and invitation, changeable."""

    class Answer(models.TextChoices):
        ACCEPT = "accept"
        DECLINE = "decline"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    answer = models.CharField(max_length=8, choices=Answer)
    answered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Also the index that reads an invitation's answers.
            models.UniqueConstraint(fields=["message", "user"], name="chats_inviteanswer_unique"),
        ]

# --- Link previews ------------------------------------------------------------------------


class LinkPreview(models.Model):
    """What a URL's page showed when the `previews` worker last fetched it: the cache per
    URL (`LINK_PREVIEW_TTL`). `data` is `{title, description, image}`, or null when the
    page gave nothing to show (an error, not HTML, no title...): that is cached too, so a
    failing link is not fetched again for each message."""

    url = models.CharField(max_length=2000, unique=True)
    data = models.JSONField(null=True, blank=True)
    fetched_at = models.DateTimeField(default=timezone.now)


class PreviewJob(models.Model):
    """A link to preview for a message, queued in the transaction of the send or the
    edit; the `previews` worker takes it (woken by NOTIFY: migration 0004's trigger) and
    deletes it once done, so nothing is lost while the worker is down."""

    id = models.BigAutoField(primary_key=True)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+", db_index=False)
    url = models.CharField(max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "chats_preview_job"
