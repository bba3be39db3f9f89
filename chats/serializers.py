"""Input serializers validate shape and never save; output ones list their fields.

The output shapes are built by `chats.shapes` (shared with the MQTT events); the output
serializers here describe them for the API schema.
"""

import re
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from chats import schema
from chats.models import MUTED_FOREVER, Chat, InviteAnswer, Membership, Message
from chatserver.fields import QueryIntegerField, StrictBooleanField, StrictCharField, StrictInput, is_blank
from chatserver.urls_converters import MAX_ID, IdConverter

_CHAT_KEY = re.compile(IdConverter.regex)


@extend_schema_serializer(examples=[OpenApiExample("A group", value={"members": [43, 44], "name": "Climbing"})])
class ChatCreateInput(serializers.Serializer):
    members = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=1, max_length=1000
    )
    name = StrictCharField(max_length=100, required=False, default="", allow_blank=True)


@extend_schema_serializer(examples=[OpenApiExample("A new name", value={"name": "Climbing club"})])
class ChatRenameInput(serializers.Serializer):
    name = StrictCharField(max_length=100)


# --- invitations (input) ---


class InviteInput(StrictInput):
    """An invitation: `title` (1-100 characters), `url` (http or https), `expires_at` (a
    time to come)."""

    title = StrictCharField(max_length=100)
    url = serializers.URLField(max_length=2000, required=False, allow_null=True, default=None)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_title(self, value: str) -> str:
        if is_blank(value):
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate_url(self, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme.lower() not in ("http", "https"):
            raise serializers.ValidationError("Use an http or https URL.")
        return value

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Use a time to come.")
        return value


# A message's idempotency key: the model's column.
CLIENT_ID_MAX_LENGTH = Message._meta.get_field("client_id").max_length


@extend_schema_serializer(examples=[
    OpenApiExample("A reply", value={"content": "Saturday at 10?", "reply_to": 345, "client_id": "3f2a9c1e-6b1d-4e0a-9d55-0c8f1a2b7e41"}),
    OpenApiExample("A forward", value={"forward_of": 347, "client_id": "7d1c0b9e-2f4a-4c3b-8e6d-5a9f0e1b2c3d"}),
    OpenApiExample("An invitation", value={"type": "invite", "invite": schema.INVITE_INPUT}),
])
class MessageCreateInput(serializers.Serializer):
    """JSON `{content, reply_to?, client_id?}` (`MessageUploadInput` for a file);
    `{forward_of, ...}` forwards a message (no `content`); `{type: "invite", invite,
    content?}` sends an invitation (its content defaults to its title)."""

    content = StrictCharField(
        max_length=settings.MESSAGE_MAX_LENGTH, trim_whitespace=False, required=False, default=""
    )
    reply_to = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, allow_null=True, default=None)
    # Also checked by `message_create_plain`, the fast path of the commonest body.
    client_id = StrictCharField(
        max_length=CLIENT_ID_MAX_LENGTH, required=False, allow_null=True, default=None, trim_whitespace=False
    )

    # pins, forwards, invitations
    forward_of = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, required=False, allow_null=True, default=None,
        help_text="Forward this message (one the caller can read now): its content and file; send no content.",
    )
    type = serializers.ChoiceField(
        choices=[Message.Type.TEXT, Message.Type.INVITE], required=False, default=Message.Type.TEXT,
        help_text="`text` (a file's message gets its type from the file), or `invite` with `invite`.",
    )
    invite = InviteInput(required=False, allow_null=True, default=None)

    def validate(self, attrs):
        file = attrs.get("file")
        if attrs["forward_of"] is not None:
            # A forward is the original's words and file: nothing of one's own to add.
            if "content" in self.initial_data:
                raise serializers.ValidationError({"content": ["A forward takes the original's content: send none."]})
            if file is not None:
                raise serializers.ValidationError({"file": ["A forward takes the original's file: send none."]})
            if attrs["type"] != Message.Type.TEXT or attrs["invite"] is not None:
                raise serializers.ValidationError({"forward_of": ["A forward cannot be an invitation too."]})
        elif attrs["type"] == Message.Type.INVITE:
            if attrs["invite"] is None:
                raise serializers.ValidationError({"invite": ["An invitation needs its invite."]})
            if file is not None:
                raise serializers.ValidationError({"file": ["An invitation takes no file."]})
            if is_blank(attrs["content"]):
                attrs["content"] = attrs["invite"]["title"]
        elif attrs["invite"] is not None:
            raise serializers.ValidationError({"type": ['Send type "invite" with an invite.']})
        elif file is None and is_blank(attrs["content"]):
            raise serializers.ValidationError({"content": ["This field may not be blank."]})
        return {"file": None, **attrs}

    def validate_client_id(self, value: str | None) -> str | None:
        if value is not None and (not value or not value.isprintable()):
            raise serializers.ValidationError(f"Use 1 to {CLIENT_ID_MAX_LENGTH} printable characters.")
        return value


_PLAIN_KEYS = frozenset({"content", "client_id"})


def message_create_plain(data) -> dict | None:
    """`MessageCreateInput`'s validated data for the commonest body, a plain text message
    (`{content}` or `{content, client_id}`, both valid), or None: then the serializer
    decides, and words any refusal. Never accepts what the serializer refuses, and gives
    what it would give (tests/chats/test_chats.py compares the two on many bodies).

    Why: the serializer costs the message POST ~150 us of CPU (a deep copy of its seven
    fields per request, then each field's checks), ~6% of the request in the web
    process; these checks cost a few microseconds. They are the serializer's own:
    `content` a string (StrictCharField), at most MESSAGE_MAX_LENGTH characters, no NUL
    and no lone surrogate (DRF's CharField validators; a surrogate cannot be encoded as
    UTF-8), not blank (`is_blank`); `client_id` absent, null, or 1 to CLIENT_ID_MAX_LENGTH printable
    characters (`validate_client_id`; not printable: NUL and surrogates included)."""
    if type(data) is not dict or "content" not in data or not data.keys() <= _PLAIN_KEYS:
        return None
    content, client_id = data["content"], data.get("client_id")
    if type(content) is not str or not content or len(content) > settings.MESSAGE_MAX_LENGTH or "\x00" in content:
        return None
    if client_id is not None and (type(client_id) is not str or not 0 < len(client_id) <= CLIENT_ID_MAX_LENGTH
                                  or not client_id.isprintable()):
        return None
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if is_blank(content):
        return None
    return {"file": None, "content": content, "reply_to": None, "client_id": client_id, "forward_of": None,
            "type": Message.Type.TEXT, "invite": None}


class MessageUploadInput(MessageCreateInput):
    """Multipart: a `file`, and the same fields as JSON (`content` is then an optional
    caption)."""

    file = serializers.FileField(allow_empty_file=False)

    def validate_file(self, value):
        # A form may repeat a field: DRF would keep one file and drop the rest unsaid.
        parts = self.initial_data.getlist("file") if hasattr(self.initial_data, "getlist") else [value]
        if len(parts) > 1:
            raise serializers.ValidationError(f"Send one file per message ({len(parts)} were sent).")
        return value


@extend_schema_serializer(examples=[OpenApiExample("An edit", value={"content": "Saturday at 11?"}),
                                    OpenApiExample("A deletion", value={"deleted": True})])
class MessageUpdateInput(serializers.Serializer):
    """Either `{"content": "..."}` (edit) or `{"deleted": true}` (soft delete)."""

    content = StrictCharField(max_length=settings.MESSAGE_MAX_LENGTH, trim_whitespace=False, required=False)
    deleted = StrictBooleanField(required=False)

    def validate_content(self, value: str) -> str:
        if is_blank(value):
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate(self, attrs):
        if ("content" in attrs) == ("deleted" in attrs):
            raise serializers.ValidationError("Send either content (to edit) or deleted: true.")
        if attrs.get("deleted") is False:
            raise serializers.ValidationError({"deleted": ["A deleted message cannot come back."]})
        return attrs


@extend_schema_serializer(examples=[OpenApiExample("Typing", value={"typing": True}),
                                    OpenApiExample("Stopped", value={"typing": False})])
class TypingInput(serializers.Serializer):
    """`{"typing": true}` while the user types (again every 5 s), `false` when it stops."""

    typing = StrictBooleanField()


@extend_schema_serializer(examples=[OpenApiExample("Two chats known", value={"chats": {"12": 5, "9": 3}, "limit": 200})])
class SyncInput(serializers.Serializer):
    chats = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=MAX_ID), allow_empty=True
    )
    limit = serializers.IntegerField(min_value=1, max_value=500, required=False, default=200)

    def validate_chats(self, value: dict) -> dict[int, int]:
        if len(value) > 5000:
            raise serializers.ValidationError("At most 5000 chats per request.")
        # Chat ids as the paths take them (`IdConverter`): ASCII digits only, since
        # `str.isdigit` also takes "²" and other digits `int` refuses.
        if not all(_CHAT_KEY.fullmatch(key) and 1 <= int(key) <= MAX_ID for key in value):
            raise serializers.ValidationError("Keys are chat ids.")
        return {int(key): version for key, version in value.items()}


@extend_schema_serializer(examples=[OpenApiExample("Links for 300 s", value={"url": "/media/eyJhIjozNDcsInQiOjB9:1vQx2c:Zm9v/", "thumbnail_url": "/media/eyJhIjozNDcsInQiOjF9:1vQx2c:YmFy/", "expires_at": "2026-12-01T09:36:02Z"})])
class AttachmentLinkOutput(serializers.Serializer):
    url = serializers.CharField()
    thumbnail_url = serializers.CharField(allow_null=True)
    expires_at = serializers.DateTimeField()


class ChatListQuery(serializers.Serializer):
    archived = serializers.BooleanField(
        required=False, default=False, help_text="`true`: the archived chats only (else they are left out)."
    )


class HistoryQuery(serializers.Serializer):
    before = QueryIntegerField(
        min_value=1, max_value=MAX_ID, required=False, default=None, help_text="Only messages older than this id."
    )
    after = QueryIntegerField(
        min_value=0, max_value=MAX_ID, required=False, default=None,
        help_text="Only messages newer than this id (0: from the first).",
    )
    limit = QueryIntegerField(min_value=1, max_value=200, required=False, default=50, help_text="1 to 200.")


class MutedUntilField(serializers.DateTimeField):
    """An ISO-8601 time, `"forever"` (stored as `MUTED_FOREVER`), or null (not muted)."""

    def to_internal_value(self, value):
        if value == "forever":
            return MUTED_FOREVER
        return super().to_internal_value(value)


@extend_schema_serializer(examples=[OpenApiExample("A role", value={"role": "admin"}),
                                    OpenApiExample("Muted for good", value={"muted_until": "forever"}),
                                    OpenApiExample("Pinned", value={"pinned": True}),
                                    OpenApiExample("Archived", value={"archived": True})])
class MemberUpdateInput(serializers.Serializer):
    """`{role}` changes a member's role; `{muted_until}` mutes the chat for oneself,
    `{pinned}` pins it in one's list, `{archived}` archives it. One of them per request."""

    role = serializers.ChoiceField(choices=Membership.Role.choices, required=False)
    muted_until = MutedUntilField(required=False, allow_null=True)
    pinned = StrictBooleanField(required=False)
    archived = StrictBooleanField(required=False)

    def validate(self, attrs):
        if len(attrs) != 1:
            raise serializers.ValidationError("Send one of role, muted_until, pinned or archived.")
        return attrs


@extend_schema_serializer(examples=[OpenApiExample("A member", value=schema.MEMBER)])
class MemberOutput(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=Membership.Role.choices)
    last_read_message_id = serializers.IntegerField(allow_null=True)
    last_delivered_message_id = serializers.IntegerField(allow_null=True)


@extend_schema_serializer(examples=[OpenApiExample("The caller's own entry", value={**schema.OWNER, "muted_until": None, "muted": False, "pinned": True, "archived": False})])
class MemberListOutput(MemberOutput):
    """A member in the members list: the caller's own entry (only) has its mute."""

    muted_until = serializers.DateTimeField(allow_null=True, required=False)
    muted = serializers.BooleanField(required=False, help_text="muted_until is in the future.")
    pinned = serializers.BooleanField(required=False, help_text="Pinned in the caller's list.")
    archived = serializers.BooleanField(required=False, help_text="Archived in the caller's list.")


@extend_schema_serializer(examples=[OpenApiExample("A group", value=schema.CHAT)])
class ChatOutput(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.ChoiceField(choices=Chat.Kind.choices)
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_seq = serializers.IntegerField()
    version = serializers.IntegerField()
    members = MemberOutput(many=True)


class ReplyPreviewOutput(serializers.Serializer):
    """The message replied to, as it is now (first 100 characters)."""

    id = serializers.IntegerField()
    author = serializers.IntegerField(allow_null=True)
    content = serializers.CharField()
    deleted = serializers.BooleanField()


class AttachmentOutput(serializers.Serializer):
    """A message's file: paths on the API's host, which need a member's token."""

    url = serializers.CharField()
    thumbnail_url = serializers.CharField(allow_null=True)
    mime = serializers.CharField()
    size = serializers.IntegerField()
    name = serializers.CharField()
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)


class ReactionOutput(serializers.Serializer):
    """One emoji on a message: how many reacted with it, and who (the first 100)."""

    emoji = serializers.CharField()
    count = serializers.IntegerField(min_value=1)
    user_ids = serializers.ListField(child=serializers.IntegerField(), help_text="In reaction order, at most 100.")


# --- pins, forwards, invitations (output) ---


class ForwardedFromOutput(serializers.Serializer):
    """The author of the message a forward copies, as it is now; null when that account
    was deleted (`forwarded` still says it is a forward)."""

    id = serializers.IntegerField()
    username = serializers.CharField()
    display_name = serializers.CharField(allow_blank=True)


class InviteAnswerOutput(serializers.Serializer):
    user = serializers.IntegerField()
    answer = serializers.ChoiceField(choices=InviteAnswer.Answer.choices)
    at = serializers.DateTimeField()


class InviteOutput(serializers.Serializer):
    """An invitation, the same for every reader."""

    title = serializers.CharField()
    url = serializers.CharField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    accepted = serializers.IntegerField(min_value=0)
    declined = serializers.IntegerField(min_value=0)
    answers = InviteAnswerOutput(many=True, help_text="In the order given (a changed answer moves to the end), at most 100.")


@extend_schema_serializer(examples=[OpenApiExample("Accept", value={"answer": "accept"}),
                                    OpenApiExample("Decline", value={"answer": "decline"})])
class InviteAnswerInput(serializers.Serializer):
    answer = serializers.ChoiceField(choices=InviteAnswer.Answer.choices)

class LinkPreviewOutput(serializers.Serializer):
    """What the page of a message's first link shows (Open Graph tags, else its title)."""

    url = serializers.CharField(help_text="The link as it is in the message.")
    title = serializers.CharField(allow_null=True)
    description = serializers.CharField(allow_null=True)
    image = serializers.CharField(allow_null=True, help_text="An absolute http(s) URL on the page's site or another; not fetched by the server.")


@extend_schema_serializer(examples=[OpenApiExample("A reply", value=schema.MESSAGE),
                                    OpenApiExample("An image", value=schema.IMAGE),
                                    OpenApiExample("A forward", value=schema.FORWARD),
                                    OpenApiExample("An invitation", value=schema.INVITE)])
class MessageOutput(serializers.Serializer):
    id = serializers.IntegerField()
    chat = serializers.IntegerField()
    seq = serializers.IntegerField()
    author = serializers.IntegerField(allow_null=True)
    type = serializers.ChoiceField(choices=Message.Type.choices)
    content = serializers.CharField()
    reply_to = serializers.IntegerField(allow_null=True)
    reply_preview = ReplyPreviewOutput(allow_null=True)
    client_id = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    edited_at = serializers.DateTimeField(allow_null=True)
    deleted = serializers.BooleanField()
    version = serializers.IntegerField()
    unread_count = serializers.IntegerField()
    attachment = AttachmentOutput(allow_null=True)
    reactions = ReactionOutput(many=True, help_text="Each emoji once, in the order first used.")
    mentions = serializers.ListField(
        child=serializers.IntegerField(), help_text="The ids of the members it mentions (`@username`, `@all`)."
    )
    # pins, forwards, invitations
    pinned_at = serializers.DateTimeField(allow_null=True, help_text="When it was pinned in its chat; null if not.")
    pinned_by = serializers.IntegerField(allow_null=True, help_text="Who pinned it; null if not pinned.")
    forwarded = serializers.BooleanField(help_text="A forward of another message.")
    forwarded_from = ForwardedFromOutput(allow_null=True)
    invite = InviteOutput(allow_null=True, help_text="An invitation's (type `invite`); null for any other message, and once deleted.")
    link_preview = LinkPreviewOutput(
        allow_null=True, help_text="The preview of its first http(s) link, once the server fetched it; else null."
    )


@extend_schema_serializer(examples=[OpenApiExample("The newest page", value={"results": [schema.MESSAGE, schema.IMAGE], "has_more": True})])
class MessagePageOutput(serializers.Serializer):
    results = MessageOutput(many=True)
    has_more = serializers.BooleanField()


@extend_schema_serializer(examples=[OpenApiExample("A chat in the list", value=schema.SUMMARY)])
class ChatSummaryOutput(ChatOutput):
    """A chat in the user's chat list."""

    last_message = MessageOutput(allow_null=True)
    unread_count = serializers.IntegerField()
    mention_count = serializers.IntegerField(help_text="Unread messages that mention the caller.")
    muted_until = serializers.DateTimeField(allow_null=True, help_text="The caller's mute of this chat.")
    muted = serializers.BooleanField()
    pinned = serializers.BooleanField(help_text="Pinned by the caller: first in its list.")
    archived = serializers.BooleanField(help_text="Archived by the caller (in `?archived=true`).")


class SyncChatOutput(serializers.Serializer):
    id = serializers.IntegerField()
    version = serializers.IntegerField()
    messages = MessageOutput(many=True)
    has_more = serializers.BooleanField()
    members = MemberOutput(many=True)


@extend_schema_serializer(examples=[OpenApiExample("Back after a while", value=schema.SYNC)])
class SyncOutput(serializers.Serializer):
    changed = SyncChatOutput(many=True)
    removed = serializers.ListField(child=serializers.IntegerField())
    new = ChatOutput(many=True)


# --- Search --------------------------------------------------------------------------


class MessageSearchQuery(serializers.Serializer):
    q = serializers.CharField(
        min_length=1, max_length=200, trim_whitespace=True,
        help_text="1 to 200 characters (after trimming). Every word matches as a word prefix; "
        "text in scripts written without spaces (Chinese, Japanese, Korean, Thai) also anywhere.",
    )
    chat = QueryIntegerField(
        min_value=1, max_value=MAX_ID, required=False, default=None, help_text="Only this chat (one of the caller's)."
    )
    before = QueryIntegerField(
        min_value=1, max_value=MAX_ID, required=False, default=None,
        help_text="Only messages older than this id (the last hit's id: the next page).",
    )
    limit = QueryIntegerField(min_value=1, max_value=50, required=False, default=20, help_text="1 to 50.")


class SearchHitOutput(serializers.Serializer):
    """A message that matched: where it is, and a snippet of it."""

    id = serializers.IntegerField(help_text="The message's id.")
    chat = serializers.IntegerField()
    seq = serializers.IntegerField()
    author = serializers.IntegerField(allow_null=True)
    type = serializers.ChoiceField(choices=Message.Type.choices)
    created_at = serializers.DateTimeField()
    edited_at = serializers.DateTimeField(allow_null=True)
    snippet = serializers.CharField(
        allow_blank=True,
        help_text="Plain text from the message around its first match (at most 120 characters, "
        "whitespace runs as one space, `…` where cut). No markup.",
    )
    highlights = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(min_value=0), min_length=2, max_length=2),
        help_text="The matches in `snippet`: [start, end) pairs in UTF-16 code units "
        "(Java/Kotlin string indices), in order, not overlapping.",
    )


@extend_schema_serializer(examples=[OpenApiExample("Two hits", value=schema.SEARCH)])
class SearchPageOutput(serializers.Serializer):
    results = SearchHitOutput(many=True, help_text="Newest first.")
    has_more = serializers.BooleanField(help_text="Older hits follow: ask again with before=<the last id>.")
