from datetime import timedelta

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import exceptions, generics
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from chats import downloads, selectors, shapes
from chats.services import chats as chat_services
from chats.services import members as member_services
from chats.services.message_edit import message_update
from chats.services.message_send import message_send
from chats.services.pointers import pointer_move
from chats.services.reactions import EMOJI, reaction_add, reaction_remove
from chats.services.typing import typing_update
from chats.send_view import with_fast_send
from chats.invites import invite_new
from chats.models import Message
from chats.services import pins as pin_services
from chats.services.invites import invite_answer
from chats.serializers import (
    AttachmentLinkOutput,
    ChatCreateInput,
    ChatOutput,
    ChatRenameInput,
    ChatSummaryOutput,
    HistoryQuery,
    MemberOutput,
    MemberListOutput,
    MemberUpdateInput,
    MessageCreateInput,
    MessageSearchQuery,
    MessageOutput,
    MessageUploadInput,
    MessagePageOutput,
    SearchPageOutput,
    MessageUpdateInput,
    SyncInput,
    SyncOutput,
    TypingInput,
    message_create_plain,
    ChatListQuery,
    InviteAnswerInput,
)
from accounts.authentication import device_confirm
from accounts.errors import BlockedError, TokenRevoked, UserNotFound
from chats.errors import (
    AttachmentNotFound,
    CannotPost,
    ChatNotFound,
    InvalidCursor,
    LinkExpired,
    MessageDeleted,
    MessageNotFound,
    NotAGroup,
    NotAllowed,
    NotAuthor,
    PayloadTooLarge,
    InvitationExpired,
    NotAnInvitation,
    OwnInvitation,
    TooManyPinnedChats,
    TooManyPins,
)
from chats.throttles import SendThrottle, UploadThrottle
from chatserver.errors import NotYours, Overloaded
from chatserver.exception_handler import DATABASE_UNAVAILABLE
from chatserver.openapi import Refusal, raises
from chatserver.parsers import JSONParser
from chatserver.renderers import OrjsonRenderer
from chatserver.throttling import DeliveryBackpressure


def _chat_response(chat, status: int = 200) -> Response:
    members = selectors.chat_members(chat_id=chat.id)
    return Response(shapes.chat_data(chat, members), status=status)


class ChatsView(APIView):
    @extend_schema(
        summary="Start a direct chat with one user, or create a group.",
        request=ChatCreateInput,
        responses={201: ChatOutput, 200: ChatOutput},
        tags=["chats"],
        description="One other member and no name: the pair's direct chat (200 if it "
        "exists already). Otherwise a group owned by the caller.",
    )
    @raises(BlockedError)
    def post(self, request):
        data = ChatCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        chat, created = chat_services.chat_create(
            actor=request.user,
            member_ids=data.validated_data["members"],
            name=data.validated_data["name"],
        )
        return _chat_response(chat, status=201 if created else 200)


class ChatDetailView(APIView):
    @extend_schema(
        summary="One chat of the caller's, with its members.",
        responses={200: ChatOutput}, tags=["chats"],
    )
    @raises(ChatNotFound)
    def get(self, request, chat_id: int):
        membership = selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        return _chat_response(membership.chat)

    @extend_schema(
        summary="Rename a group (admins and the owner).",
        request=ChatRenameInput, responses={200: ChatOutput}, tags=["chats"],
    )
    @raises(ChatNotFound, NotAGroup, NotAllowed)
    def patch(self, request, chat_id: int):
        data = ChatRenameInput(data=request.data)
        data.is_valid(raise_exception=True)
        chat = chat_services.chat_rename(chat_id=chat_id, actor=request.user, **data.validated_data)
        return _chat_response(chat)

    @extend_schema(
        summary="Delete a group (its owner), or hide a direct chat until its next message.",
        responses={204: None}, tags=["chats"],
    )
    @raises(ChatNotFound, NotAllowed)
    def delete(self, request, chat_id: int):
        chat_services.chat_delete(chat_id=chat_id, actor=request.user)
        return Response(status=204)



class SizeLimitUploadHandler(FileUploadHandler):
    """Stops reading an upload as soon as it passes the limit (bodies without a
    Content-Length, e.g. chunked, are only caught this way)."""

    def __init__(self, request=None, limit: int = 0) -> None:
        super().__init__(request)
        self.limit, self.received, self.exceeded = limit, 0, False

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size):
        return None


class ChatMessagesView(APIView):
    # A JSON POST may take its device from the process's token cache (no token query):
    # message_send's write statement checks the device itself, and any other answer is
    # given only after reading it (message_send, handle_exception). GET reads it every time.
    token_cache = True  # accounts.authentication.DeviceTokenAuthentication
    parser_classes = [JSONParser, MultiPartParser]
    # POST only: refused while delivery is behind (no query: a verdict per process and
    # second), then one round trip to the shared bucket per message (two with a file).
    throttle_classes = [DeliveryBackpressure, SendThrottle, UploadThrottle]
    # orjson (chatserver.renderers): the same bytes as DRF's renderer for these answers.
    renderer_classes = [OrjsonRenderer]

    # Answers that say nothing and write nothing, given without reading the device: a
    # signed-out one gets its 401 on the retry (no query per refusal while shedding load).
    UNCONFIRMED = (exceptions.NotAuthenticated, exceptions.AuthenticationFailed, exceptions.Throttled,
                   Overloaded, *DATABASE_UNAVAILABLE)

    @classmethod
    def as_view(cls, **initkwargs):
        # The commonest POST, a plain text message accepted, is answered without DRF's
        # dispatch (chats/send_view.py); everything else by this view.
        return with_fast_send(super().as_view(**initkwargs), cls)

    def handle_exception(self, exc):
        device = getattr(self.request, "_auth", None)
        if device is not None and not isinstance(exc, (TokenRevoked, *self.UNCONFIRMED)):
            # A refusal (validation, not found...) to a device from the cache: a signed-out
            # one gets 401, as without the cache (no query if the send read it already).
            try:
                device_confirm(device)
            except TokenRevoked as revoked:
                exc = revoked
        if isinstance(exc, TokenRevoked):
            # DRF's own 401, with its WWW-Authenticate header.
            exc = exceptions.AuthenticationFailed(exc.message)
        return super().handle_exception(exc)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method == "POST" and request.content_type.startswith("multipart/"):
            # Refuse before reading: the declared length, with room for the form fields.
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
            if declared > settings.ATTACHMENT_MAX_SIZE + 64 * 1024:
                raise PayloadTooLarge()
            self.size_guard = SizeLimitUploadHandler(request._request, settings.ATTACHMENT_MAX_SIZE)
            request._request.upload_handlers.insert(0, self.size_guard)

    @extend_schema(
        summary="A page of a chat's history, oldest first.",
        parameters=[HistoryQuery], responses={200: MessagePageOutput}, tags=["messages"],
    )
    @raises(ChatNotFound, InvalidCursor)
    def get(self, request, chat_id: int):
        query = HistoryQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        membership = selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        page, has_more = selectors.message_page(
            chat_id=chat_id, from_seq=selectors.history_start_seq(membership), **query.validated_data
        )
        results = selectors.messages_data(chat_id=chat_id, messages=page)
        return Response({"results": results, "has_more": has_more})

    @extend_schema(
        summary="Send a message (JSON), or a file with an optional caption (multipart).",
        request={"application/json": MessageCreateInput, "multipart/form-data": MessageUploadInput},
        responses={201: MessageOutput, 200: MessageOutput},
        tags=["messages"],
        description="The same client_id again returns the first message with 200. "
        "`forward_of` forwards a message the caller can read (its content and file, "
        "`forwarded_from`; 404 `message_not_found` for one it cannot read or a deleted one); "
        "`type: invite` with `invite` sends an invitation.",
    )
    @raises(ChatNotFound, CannotPost, BlockedError, PayloadTooLarge, MessageNotFound, Overloaded)
    def post(self, request, chat_id: int):
        upload = request.content_type.startswith("multipart/")
        # A plain text message skips the serializer (the same checks, cheaper).
        validated = None if upload else message_create_plain(request.data)
        if validated is None:
            data = (MessageUploadInput if upload else MessageCreateInput)(data=request.data)
            guard = getattr(self, "size_guard", None)
            if guard is not None and guard.exceeded:
                raise PayloadTooLarge()
            data.is_valid(raise_exception=True)
            validated = data.validated_data
        # No membership query here: message_send's seq statement checks it (404 for
        # outsiders), one round trip less on the hottest path.
        message, created = message_send(
            actor=request.user,
            chat_id=chat_id,
            content=validated["content"],
            reply_to_id=validated["reply_to"],
            client_id=validated["client_id"],
            upload=validated["file"],
            forward_of_id=validated["forward_of"],
            invite=_invite_or_none(validated),
            device=request.auth,
        )
        return Response(shapes.message_output(message), status=201 if created else 200)


def _invite_or_none(data: dict) -> dict | None:
    return invite_new(**data["invite"]) if data["type"] == Message.Type.INVITE else None


class MessageDetailView(APIView):
    @extend_schema(
        summary="Edit a message, or delete it (soft: it keeps its place).",
        request=MessageUpdateInput,
        responses={200: MessageOutput},
        tags=["messages"],
        description="`{content}` edits (author only); `{deleted: true}` soft-deletes (author, "
        "or an admin or the owner of a group).",
    )
    @raises(ChatNotFound, MessageNotFound, NotAllowed, NotAuthor, MessageDeleted)
    def patch(self, request, chat_id: int, message_id: int):
        data = MessageUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        message = message_update(
            actor=request.user,
            chat_id=chat_id,
            message_id=message_id,
            content=data.validated_data.get("content"),
            delete=data.validated_data.get("deleted", False),
        )
        return Response(shapes.message_output(message))


BAD_EMOJI = Refusal(400, "validation_error", "Invalid input.", {"emoji": [f"React with one of {' '.join(EMOJI)}."]})
EMOJI_PARAMETER = OpenApiParameter(
    "emoji", OpenApiTypes.STR, OpenApiParameter.PATH,
    description=f"One of {' '.join(EMOJI)} (URL-encoded UTF-8; with or without U+FE0F).",
)


class ReactionView(APIView):
    @extend_schema(
        summary="React to a message with an emoji (one of each per user and message).",
        request=None, responses={200: MessageOutput}, tags=["messages"], parameters=[EMOJI_PARAMETER],
        description="Idempotent: a reaction the caller already has changes nothing. Members "
        "get `message.updated`, the author `reaction.added`.",
    )
    @raises(BAD_EMOJI, ChatNotFound, CannotPost, BlockedError, MessageNotFound, MessageDeleted)
    def put(self, request, chat_id: int, message_id: int, emoji: str):
        message = reaction_add(actor=request.user, chat_id=chat_id, message_id=message_id, emoji=emoji)
        return Response(shapes.message_output(message))

    @extend_schema(
        summary="Take one's reaction back.",
        request=None, responses={204: None}, tags=["messages"], parameters=[EMOJI_PARAMETER],
        description="204 also when the caller had no such reaction (nothing changes, nobody is told).",
    )
    @raises(BAD_EMOJI, ChatNotFound, CannotPost, BlockedError, MessageNotFound, MessageDeleted)
    def delete(self, request, chat_id: int, message_id: int, emoji: str):
        reaction_remove(actor=request.user, chat_id=chat_id, message_id=message_id, emoji=emoji)
        return Response(status=204)


class TypingView(APIView):
    @extend_schema(
        summary="Say that one is typing in a chat, or stopped.",
        request=TypingInput, responses={204: None}, tags=["messages"],
        description="The other members get `typing.updated` on the chat's topic (QoS 0, never "
        "stored or queued). Send `true` again every 5 s while typing; others show it for "
        "8 s after the last one. At most one per member and chat and second is passed on.",
    )
    @raises(ChatNotFound, CannotPost, BlockedError)
    def post(self, request, chat_id: int):
        data = TypingInput(data=request.data)
        data.is_valid(raise_exception=True)
        typing_update(actor=request.user, chat_id=chat_id, typing=data.validated_data["typing"])
        return Response(status=204)


def _member_attachment(request, chat_id: int, message_id: int):
    selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
    message = selectors.message_get_in_chat(chat_id=chat_id, message_id=message_id)
    attachment = shapes.attachment_or_none(message)
    if attachment is None:
        raise downloads.AttachmentNotFound()
    return attachment


class AttachmentView(APIView):
    """The file (or its thumbnail), for members, with their token."""

    thumbnail = False

    @extend_schema(
        summary="Download a message's file.",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, tags=["messages"],
    )
    @raises(ChatNotFound, MessageNotFound, AttachmentNotFound)
    def get(self, request, chat_id: int, message_id: int):
        return downloads.serve(_member_attachment(request, chat_id, message_id), thumbnail=self.thumbnail)


@extend_schema_view(get=extend_schema(summary="Download an image's 320 px WebP thumbnail."))
class ThumbnailView(AttachmentView):
    thumbnail = True


class AttachmentLinkView(APIView):
    @extend_schema(
        summary="Signed, short-lived links to a message's file and thumbnail.",
        responses={200: AttachmentLinkOutput},
        tags=["messages"],
        description="Short-lived URLs that need no token, for loaders and players that "
        "cannot send headers (ATTACHMENT_LINK_TTL seconds, 300 by default).",
    )
    @raises(ChatNotFound, MessageNotFound, AttachmentNotFound)
    def get(self, request, chat_id: int, message_id: int):
        attachment = _member_attachment(request, chat_id, message_id)
        expires = timezone.now() + timedelta(seconds=settings.ATTACHMENT_LINK_TTL)
        thumb = downloads.link_token(attachment=attachment, thumbnail=True) if attachment.thumbnail else None
        return Response(
            {
                "url": f"/media/{downloads.link_token(attachment=attachment, thumbnail=False)}/",
                "thumbnail_url": f"/media/{thumb}/" if thumb else None,
                "expires_at": expires,
            }
        )


class SignedMediaView(APIView):
    """A file by signed link: no token, but the link expires."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Download a file by signed link, without a token.",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, tags=["messages"],
    )
    @raises(LinkExpired, AttachmentNotFound)
    def get(self, request, token: str):
        attachment, thumbnail = downloads.attachment_from_token(token)
        return downloads.serve(attachment, thumbnail=thumbnail)


class PointerView(APIView):
    """Move the caller's read pointer (`.../messages/<mid>/`; `DeliveredPointerView`: the
    delivered one, `.../delivered/<mid>/`) forward; it never moves back."""

    read = True

    @extend_schema(
        summary="Move the caller's read pointer forward.",
        request=None, responses={200: MemberOutput}, tags=["members"],
    )
    @raises(ChatNotFound, NotYours, MessageNotFound)
    def patch(self, request, chat_id: int, user_id: int, message_id: int):
        if user_id != request.user.id:
            selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
            raise NotYours()
        membership = pointer_move(
            actor=request.user, chat_id=chat_id, message_id=message_id, read=self.read, device_id=request.auth.id
        )
        return Response(shapes.member_data(membership))


@extend_schema_view(
    patch=extend_schema(summary="Move the caller's delivered pointer forward: its phone received up to this message.")
)
class DeliveredPointerView(PointerView):
    read = False


class SyncView(APIView):
    @extend_schema(
        summary="Catch up after being away: what changed in one's chats since the versions one has.",
        request=SyncInput,
        responses={200: SyncOutput},
        tags=["sync"],
        description="Catch up after being away: send the highest `version` you have of "
        "each chat; get what changed since in each (messages sent, edited, deleted, "
        "with members), the chats you left or lost, and the chats you joined.",
    )
    def post(self, request):
        data = SyncInput(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(selectors.sync(user_id=request.user.id, **data.validated_data))


class ChatMembersView(APIView):
    @extend_schema(
        summary="A chat's members, oldest first, with their read and delivered pointers.",
        responses={200: MemberListOutput(many=True)},
        tags=["members"],
        description="The caller's own entry also has `muted_until` and `muted`.",
    )
    @raises(ChatNotFound)
    def get(self, request, chat_id: int):
        selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        members, now = selectors.chat_members(chat_id=chat_id), timezone.now()
        return Response([shapes.member_output(m, caller_id=request.user.id, now=now) for m in members])


class ChatMemberView(APIView):
    @extend_schema(
        summary="Add a user to a group (admins and the owner).",
        request=None, responses={201: MemberOutput, 200: MemberOutput}, tags=["members"],
    )
    @raises(ChatNotFound, NotAGroup, NotAllowed, UserNotFound, BlockedError)
    def post(self, request, chat_id: int, user_id: int):
        membership, created = member_services.member_add(chat_id=chat_id, actor=request.user, user_id=user_id)
        return Response(shapes.member_data(membership), status=201 if created else 200)

    @extend_schema(
        summary="Change a member's role, or mute, pin or archive the chat for oneself.",
        request=MemberUpdateInput,
        responses={200: MemberListOutput},
        tags=["members"],
        description="`{role}` changes a member's role (see the roles matrix); "
        "`{muted_until: <ISO-8601> | \"forever\" | null}` on oneself mutes the chat's pushes "
        "until then, for good, or no more (MQTT delivery and unread counts go on); "
        "`{pinned: true|false}` pins the chat first in one's list (at most 5); "
        "`{archived: true|false}` archives it (out of the list until a newer message, unless muted).",
    )
    @raises(ChatNotFound, NotYours, NotAGroup, NotAllowed, UserNotFound, TooManyPinnedChats)
    def patch(self, request, chat_id: int, user_id: int):
        data = MemberUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        own = {"muted_until", "pinned", "archived"} & set(data.validated_data)
        if own and user_id != request.user.id:
            selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
            raise NotYours()
        if "muted_until" in data.validated_data:
            membership = member_services.member_mute(
                chat_id=chat_id, actor=request.user, until=data.validated_data["muted_until"]
            )
        elif "pinned" in data.validated_data:
            membership = pin_services.member_pin(chat_id=chat_id, actor=request.user, pinned=data.validated_data["pinned"])
        elif "archived" in data.validated_data:
            membership = pin_services.member_archive(
                chat_id=chat_id, actor=request.user, archived=data.validated_data["archived"]
            )
        else:
            membership = member_services.member_set_role(
                chat_id=chat_id, actor=request.user, user_id=user_id, role=data.validated_data["role"]
            )
        return Response(shapes.member_output(membership, caller_id=request.user.id, now=timezone.now()))

    @extend_schema(summary="Leave a group, or kick a member.", responses={204: None}, tags=["members"])
    @raises(ChatNotFound, NotAGroup, NotAllowed, UserNotFound)
    def delete(self, request, chat_id: int, user_id: int):
        member_services.member_remove(chat_id=chat_id, actor=request.user, user_id=user_id)
        return Response(status=204)


class UserChatsView(generics.ListAPIView):
    """The caller's chats (`/accounts/<me>/chats/`), most recent activity first, each with
    its members, `last_message` and `unread_count`."""

    @extend_schema(
        summary="The caller's chat list, most recent activity first, with unread counts.",
        responses={200: ChatSummaryOutput(many=True)}, tags=["chats"], parameters=[ChatListQuery],
        description="Pinned chats first (the latest pinned first), then by activity; archived "
        "chats only with `?archived=true`, and then only they.",
    )
    @raises(NotYours)
    def get(self, request, *args, **kwargs):
        if kwargs["user_id"] != request.user.id:
            raise NotYours()
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        query = ChatListQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.chat_list_queryset(user_id=self.request.user.id, archived=query.validated_data["archived"])

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(selectors.chat_summaries(memberships=page))


# --- pins, forwards, invitations ---


class MessagePinView(APIView):
    @extend_schema(
        summary="Pin a message in its chat.",
        request=None, responses={200: MessageOutput}, tags=["messages"],
        description="Admins and the owner of a group; either member of a direct chat. At most "
        "50 per chat. Idempotent. Members get `message.updated` with `pinned_at` and `pinned_by`.",
    )
    @raises(ChatNotFound, NotAllowed, MessageNotFound, MessageDeleted, TooManyPins)
    def put(self, request, chat_id: int, message_id: int):
        message = pin_services.message_pin(actor=request.user, chat_id=chat_id, message_id=message_id, pinned=True)
        return Response(shapes.message_output(message))

    @extend_schema(
        summary="Unpin a message.",
        request=None, responses={204: None}, tags=["messages"],
        description="The same people as pinning. 204 also when it was not pinned (nothing changes, nobody is told).",
    )
    @raises(ChatNotFound, NotAllowed, MessageNotFound)
    def delete(self, request, chat_id: int, message_id: int):
        pin_services.message_pin(actor=request.user, chat_id=chat_id, message_id=message_id, pinned=False)
        return Response(status=204)


class ChatPinsView(APIView):
    @extend_schema(
        summary="A chat's pinned messages, the latest pinned first.",
        responses={200: MessageOutput(many=True)}, tags=["messages"],
        description="At most 50, so not paginated.",
    )
    @raises(ChatNotFound)
    def get(self, request, chat_id: int):
        selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        return Response([shapes.message_output(m) for m in selectors.message_pins(chat_id=chat_id)])


class InviteAnswerView(APIView):
    @extend_schema(
        summary="Accept or decline an invitation.",
        request=InviteAnswerInput, responses={200: MessageOutput}, tags=["messages"],
        description="Once per member; answering again changes the answer (the same one again "
        "changes nothing). Members get `message.updated` with the invitation's answers.",
    )
    @raises(ChatNotFound, CannotPost, BlockedError, MessageNotFound, MessageDeleted, NotAnInvitation,
            OwnInvitation, InvitationExpired)
    def post(self, request, chat_id: int, message_id: int):
        data = InviteAnswerInput(data=request.data)
        data.is_valid(raise_exception=True)
        message = invite_answer(
            actor=request.user, chat_id=chat_id, message_id=message_id, answer=data.validated_data["answer"]
        )
        return Response(shapes.message_output(message))

# --- Search --------------------------------------------------------------------------


class MessageSearchView(APIView):
    @extend_schema(
        summary="Search the messages the caller can read, newest first.",
        parameters=[MessageSearchQuery], responses={200: SearchPageOutput}, tags=["search"],
        description="Messages of the caller's chats (not deleted; the history a member reads), "
        "whose words start with every word of `q` (text in scripts without spaces also anywhere). "
        "Each hit has a plain-text snippet and its matches as UTF-16 offsets.",
    )
    @raises(ChatNotFound)
    def get(self, request):
        query = MessageSearchQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        page, has_more = selectors.message_search(
            user_id=request.user.id, query=data["q"], chat_id=data["chat"], before=data["before"], limit=data["limit"]
        )
        return Response({"results": [shapes.search_hit_data(m) for m in page], "has_more": has_more})
