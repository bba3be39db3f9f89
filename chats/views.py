from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from chats import events, selectors, services
from chatserver.errors import PermissionDenied
from chats.serializers import (
    SyncInput,
    SyncOutput,
    MessageUpdateInput,
    ChatCreateInput,
    ChatOutput,
    ChatRenameInput,
    HistoryQuery,
    MemberOutput,
    MemberRoleInput,
    MessageCreateInput,
    MessageOutput,
    MessagePageOutput,
)


def _chat_response(chat, status: int = 200) -> Response:
    members = selectors.chat_members(chat_id=chat.id)
    return Response(events.chat_data(chat, members), status=status)


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
        chat, created = services.chat_create(
            creator=request.user,
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
        chat = services.chat_rename(chat_id=chat_id, actor_id=request.user.id, **data.validated_data)
        return _chat_response(chat)

    @extend_schema(responses={204: None}, tags=["chats"])
    def delete(self, request, chat_id: int):
        services.chat_delete(chat_id=chat_id, actor_id=request.user.id)
        return Response(status=204)


class ChatMessagesView(APIView):
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
        data.is_valid(raise_exception=True)
        selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        message, created = services.message_send(
            chat_id=chat_id,
            author_id=request.user.id,
            content=data.validated_data["content"],
            reply_to_id=data.validated_data["reply_to"],
            client_id=data.validated_data["client_id"],
        )
        return Response(message, status=201 if created else 200)


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
        message = services.message_update(
            chat_id=chat_id,
            actor_id=request.user.id,
            message_id=message_id,
            content=data.validated_data.get("content"),
            delete=data.validated_data.get("deleted", False),
        )
        return Response(message)


class NotYours(PermissionDenied):
    code = "not_yours"
    message = "You can only move your own pointers."


class PointerView(APIView):
    """Move the caller's read pointer (`.../messages/<mid>/`) or delivered pointer
    (`.../delivered/<mid>/`) forward; it never moves back."""

    read = True

    @extend_schema(request=None, responses={200: MemberOutput}, tags=["members"])
    def patch(self, request, chat_id: int, user_id: int, message_id: int):
        if user_id != request.user.id:
            selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
            raise NotYours()
        membership = services.pointer_move(
            chat_id=chat_id, user=request.user, message_id=message_id, read=self.read
        )
        membership.user = request.user
        return Response(events.member_data(membership))


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
    @extend_schema(responses={200: MemberOutput(many=True)}, tags=["members"])
    def get(self, request, chat_id: int):
        selectors.membership_get_for_member(chat_id=chat_id, user_id=request.user.id)
        members = selectors.chat_members(chat_id=chat_id)
        return Response([events.member_data(m) for m in members])


class ChatMemberView(APIView):
    @extend_schema(request=None, responses={201: MemberOutput, 200: MemberOutput}, tags=["members"])
    def post(self, request, chat_id: int, user_id: int):
        membership, created = services.member_add(
            chat_id=chat_id, actor_id=request.user.id, user_id=user_id
        )
        return Response(events.member_data(membership), status=201 if created else 200)

    @extend_schema(request=MemberRoleInput, responses={200: MemberOutput}, tags=["members"])
    def patch(self, request, chat_id: int, user_id: int):
        data = MemberRoleInput(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.member_set_role(
            chat_id=chat_id, actor_id=request.user.id, user_id=user_id, **data.validated_data
        )
        return Response(events.member_data(membership))

    @extend_schema(responses={204: None}, tags=["members"])
    def delete(self, request, chat_id: int, user_id: int):
        services.member_remove(chat_id=chat_id, actor_id=request.user.id, user_id=user_id)
        return Response(status=204)
