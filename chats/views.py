from datetime import timedelta

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from chats import downloads, selectors, shapes
from chats.services import chats as chat_services
from chats.services import members as member_services
from chats.services.message_edit import message_update
from chats.services.message_send import message_send
from chats.services.pointers import pointer_move
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
    MessageOutput,
    MessagePageOutput,
    MessageUpdateInput,
    SyncInput,
    SyncOutput,
)
from chats.errors import PayloadTooLarge
from chats.throttles import SendThrottle, UploadThrottle
from chatserver.errors import NotYours


def _chat_response(chat, status: int = 200) -> Response:
    members = selectors.chat_members(chat_id=chat.id)
    return Response(shapes.chat_data(chat, members), status=status)


class ChatsView(APIView):
    @extend_schema(
        request=ChatCreateInput,
        responses={201: ChatOutput, 200: ChatOutput},
        tags=["chats"],
        description="One other member and no name: the pair's direct chat (200 if it "
        "exists already). Otherwise a group owned by the caller.",
    )
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
    @extend_schema(responses={200: ChatOutput}, tags=["chats"])
    def get(self, request, chat_id: int):
        membership = selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        return _chat_response(membership.chat)

    @extend_schema(request=ChatRenameInput, responses={200: ChatOutput}, tags=["chats"])
    def patch(self, request, chat_id: int):
        data = ChatRenameInput(data=request.data)
        data.is_valid(raise_exception=True)
        chat = chat_services.chat_rename(chat_id=chat_id, actor=request.user, **data.validated_data)
        return _chat_response(chat)

    @extend_schema(responses={204: None}, tags=["chats"])
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
    parser_classes = [JSONParser, MultiPartParser]
    # POST only; one round trip to the shared bucket per message (two with a file).
    throttle_classes = [SendThrottle, UploadThrottle]

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
        parameters=[
            OpenApiParameter("before", int, description="Only messages older than this id."),
            OpenApiParameter("after", int, description="Only messages newer than this id."),
            OpenApiParameter("limit", int, description="1 to 200, default 50."),
        ],
        responses={200: MessagePageOutput},
        tags=["messages"],
    )
    def get(self, request, chat_id: int):
        query = HistoryQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        page, has_more = selectors.message_page(chat_id=chat_id, **query.validated_data)
        results = selectors.messages_data(chat_id=chat_id, messages=page)
        return Response({"results": results, "has_more": has_more})

    @extend_schema(
        request=MessageCreateInput,
        responses={201: MessageOutput, 200: MessageOutput},
        tags=["messages"],
        description="The same client_id again returns the first message with 200.",
    )
    def post(self, request, chat_id: int):
        data = MessageCreateInput(data=request.data)
        guard = getattr(self, "size_guard", None)
        if guard is not None and guard.exceeded:
            raise PayloadTooLarge()
        data.is_valid(raise_exception=True)
        # No membership query here: message_send's seq statement checks it (404 for
        # outsiders), one round trip less on the hottest path.
        message, created = message_send(
            actor=request.user,
            chat_id=chat_id,
            content=data.validated_data["content"],
            reply_to_id=data.validated_data["reply_to"],
            client_id=data.validated_data["client_id"],
            upload=data.validated_data["file"],
        )
        return Response(shapes.message_output(message), status=201 if created else 200)


class MessageDetailView(APIView):
    @extend_schema(
        request=MessageUpdateInput,
        responses={200: MessageOutput},
        tags=["messages"],
        description="`{content}` edits (author only); `{deleted: true}` soft-deletes (author, "
        "or an admin or the owner of a group).",
    )
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

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, tags=["messages"])
    def get(self, request, chat_id: int, message_id: int):
        return downloads.serve(_member_attachment(request, chat_id, message_id), thumbnail=self.thumbnail)


class AttachmentLinkView(APIView):
    @extend_schema(
        responses={200: AttachmentLinkOutput},
        tags=["messages"],
        description="Short-lived URLs that need no token, for loaders and players that "
        "cannot send headers (ATTACHMENT_LINK_TTL seconds, 300 by default).",
    )
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

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, tags=["messages"])
    def get(self, request, token: str):
        attachment, thumbnail = downloads.attachment_from_token(token)
        return downloads.serve(attachment, thumbnail=thumbnail)


class PointerView(APIView):
    """Move the caller's read pointer (`.../messages/<mid>/`) or delivered pointer
    (`.../delivered/<mid>/`) forward; it never moves back."""

    read = True

    @extend_schema(request=None, responses={200: MemberOutput}, tags=["members"])
    def patch(self, request, chat_id: int, user_id: int, message_id: int):
        if user_id != request.user.id:
            selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
            raise NotYours()
        membership = pointer_move(
            actor=request.user, chat_id=chat_id, message_id=message_id, read=self.read, device_id=request.auth.id
        )
        return Response(shapes.member_data(membership))


class SyncView(APIView):
    @extend_schema(
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
        responses={200: MemberListOutput(many=True)},
        tags=["members"],
        description="The caller's own entry also has `muted_until` and `muted`.",
    )
    def get(self, request, chat_id: int):
        selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        members, now = selectors.chat_members(chat_id=chat_id), timezone.now()
        return Response([shapes.member_output(m, caller_id=request.user.id, now=now) for m in members])


class ChatMemberView(APIView):
    @extend_schema(request=None, responses={201: MemberOutput, 200: MemberOutput}, tags=["members"])
    def post(self, request, chat_id: int, user_id: int):
        membership, created = member_services.member_add(chat_id=chat_id, actor=request.user, user_id=user_id)
        return Response(shapes.member_data(membership), status=201 if created else 200)

    @extend_schema(
        request=MemberUpdateInput,
        responses={200: MemberListOutput},
        tags=["members"],
        description="`{role}` changes a member's role (see the roles matrix); "
        "`{muted_until: <ISO-8601> | \"forever\" | null}` on oneself mutes the chat's pushes "
        "until then, for good, or no more (MQTT delivery and unread counts go on).",
    )
    def patch(self, request, chat_id: int, user_id: int):
        data = MemberUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        if "muted_until" in data.validated_data:
            if user_id != request.user.id:
                selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
                raise NotYours()
            membership = member_services.member_mute(
                chat_id=chat_id, actor=request.user, until=data.validated_data["muted_until"]
            )
        else:
            membership = member_services.member_set_role(
                chat_id=chat_id, actor=request.user, user_id=user_id, role=data.validated_data["role"]
            )
        return Response(shapes.member_output(membership, caller_id=request.user.id, now=timezone.now()))

    @extend_schema(responses={204: None}, tags=["members"])
    def delete(self, request, chat_id: int, user_id: int):
        member_services.member_remove(chat_id=chat_id, actor=request.user, user_id=user_id)
        return Response(status=204)


class UserChatsView(generics.ListAPIView):
    """The caller's chats (`/accounts/<me>/chats/`), most recent activity first, each with
    its members, `last_message` and `unread_count`."""

    @extend_schema(responses={200: ChatSummaryOutput(many=True)}, tags=["chats"])
    def get(self, request, *args, **kwargs):
        if kwargs["user_id"] != request.user.id:
            raise NotYours()
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return selectors.chat_list_queryset(user_id=self.request.user.id)

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(selectors.chat_summaries(memberships=page))
