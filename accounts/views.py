from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts import schema, selectors, services, social
from accounts.serializers import (
    BlockStatusOutput,
    CredentialsInput,
    FriendRequestsOutput,
    FriendStatusOutput,
    SessionOutput,
    PushTokenInput,
    SettingsInput,
    SignupInput,
    UserOutput,
    UserSearchQuery,
)
from accounts.errors import (
    BlockedError,
    InvalidCredentials,
    NotBlocked,
    NothingToRemove,
    SelfTarget,
    UsernameTaken,
    UserNotFound,
)
from accounts.shapes import session_data
from chatserver.errors import NotYours
from chatserver.openapi import raises


class SignupView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    @extend_schema(
        summary="Create an account and sign this device in: its token and MQTT credentials.",
        description="Usernames are 3-32 of `A-Z a-z 0-9 . _ -`, unique whatever their case; passwords "
        "8+ characters, not common, not all digits, not like the username. The answer comes once "
        "the broker has the device's account (up to `BROKER_SYNC_TIMEOUT`), so the MQTT "
        "credentials work at once. Throttled per client address (`AUTH_THROTTLE_RATE`).",
        request=SignupInput, responses={201: SessionOutput}, tags=["accounts"],
    )
    @raises(UsernameTaken)
    def post(self, request):
        data = SignupInput(data=request.data)
        data.is_valid(raise_exception=True)
        device, token = services.user_signup(**data.validated_data)
        return Response(session_data(device=device, request=request, token=token), status=201)


class LoginView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    @extend_schema(
        summary="Sign a new device in: its own token and MQTT credentials.",
        description="Each login is a new device with its own token and MQTT account; the user's "
        "other devices stay signed in. A wrong password and an unknown name get the same 401, "
        "in the same time. Throttled per client address (`AUTH_THROTTLE_RATE`).",
        request=CredentialsInput, responses={200: SessionOutput}, tags=["accounts"],
    )
    @raises(InvalidCredentials)
    def post(self, request):
        data = CredentialsInput(data=request.data)
        data.is_valid(raise_exception=True)
        device, token = services.user_login(**data.validated_data)
        return Response(session_data(device=device, request=request, token=token))


class LogoutView(APIView):
    @extend_schema(
        summary="Sign this device out: its token and its MQTT account stop working.",
        request=None, responses={204: None}, tags=["accounts"],
    )
    def post(self, request):
        services.device_logout(device=request.auth)
        return Response(status=204)


class MeView(APIView):
    @extend_schema(
        summary="The calling device's session: the user, its MQTT credentials and settings.",
        description="As signup and login answered, without the token: `mqtt` tells how this device "
        "connects to the broker (docs/mqtt.md), `settings` are the user's, `push` whether this "
        "device has an FCM token.",
        examples=[OpenApiExample("This device", value=schema.ME, response_only=True)],
        responses={200: SessionOutput}, tags=["accounts"],
    )
    def get(self, request):
        return Response(session_data(device=request.auth, request=request))

    @extend_schema(
        summary="Change the user's settings (read receipts, push previews).",
        examples=[
            OpenApiExample("Read receipts off", value={"read_receipts": False}, request_only=True),
            OpenApiExample("The session, changed", value={**schema.ME, "settings": {
                "read_receipts": False, "push_previews": True}}, response_only=True),
        ],
        request=SettingsInput,
        responses={200: SessionOutput},
        tags=["accounts"],
        description="`read_receipts: false` stops others from seeing how far you read; "
        "`push_previews: false` keeps message text out of your pushes.",
    )
    def patch(self, request):
        data = SettingsInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_settings_update(actor=request.user, **data.validated_data)
        return Response(session_data(device=request.auth, request=request))


class PushTokenView(APIView):
    """The calling device's FCM registration token (never shown back)."""

    @extend_schema(
        summary="Register or replace this device's FCM token, so that it gets pushes.",
        examples=[
            OpenApiExample("An FCM token", value={"token": "dGVzdC1kZXZpY2U6QVBBOTFiSGxrT0xjUm9zbTdyZ0p3"},
                           request_only=True),
            OpenApiExample("The session, with push on", value={**schema.ME, "push": True}, response_only=True),
        ],
        request=PushTokenInput, responses={200: SessionOutput}, tags=["accounts"],
    )
    def put(self, request):
        data = PushTokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.push_token_set(device=request.auth, token=data.validated_data["token"])
        return Response(session_data(device=request.auth, request=request))

    @extend_schema(summary="Stop pushes to this device.", responses={204: None}, tags=["accounts"])
    def delete(self, request):
        services.push_token_clear(device=request.auth)
        return Response(status=204)


class UserDetailView(APIView):
    @extend_schema(
        summary="One user's profile, with presence.",
        responses={200: UserOutput}, tags=["accounts"],
    )
    @raises(UserNotFound)
    def get(self, request, user_id: int):
        return Response(UserOutput(selectors.user_get_visible(user_id=user_id, caller=request.user)).data)


def _own(request, user_id: int) -> None:
    if user_id != request.user.id:
        raise NotYours()


class UserSearchView(generics.ListAPIView):
    """Users whose name starts with `search` (any case); never those who blocked you."""

    serializer_class = UserOutput

    @extend_schema(
        summary="Find people by the start of their username.",
        parameters=[UserSearchQuery], tags=["people"],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        query = UserSearchQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.user_search(caller=self.request.user, prefix=query.validated_data["search"][:32])


class _OwnUserList(generics.ListAPIView):
    """A paginated list of users that belongs to the caller (`/accounts/<me>/...`)."""

    serializer_class = UserOutput
    selector = None

    @extend_schema(summary="The caller's own list of users (friends or blocked), by name.", tags=["people"])
    @raises(NotYours)
    def get(self, request, *args, **kwargs):
        _own(request, kwargs["user_id"])
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return self.selector(user=self.request.user)


@extend_schema_view(get=extend_schema(summary="The caller's friends, by name."))
class FriendsView(_OwnUserList):
    selector = staticmethod(selectors.friend_list)


class FriendRequestsView(APIView):
    @extend_schema(
        summary="The caller's pending friend requests, incoming and outgoing.",
        responses={200: FriendRequestsOutput}, tags=["people"],
    )
    @raises(NotYours)
    def get(self, request, user_id: int):
        _own(request, user_id)
        requests = selectors.friend_requests(user=request.user)
        return Response({k: UserOutput(v, many=True).data for k, v in requests.items()})


class FriendView(APIView):
    @extend_schema(
        summary="Ask someone to be friends, or accept their request.",
        request=None,
        responses={201: FriendStatusOutput, 200: FriendStatusOutput},
        tags=["people"],
        description="Ask for friendship (201 requested), or accept their pending request "
        "(200 friends). Asking again answers 200 with the current status.",
    )
    @raises(NotYours, SelfTarget, UserNotFound, BlockedError)
    def post(self, request, user_id: int, friend_id: int):
        _own(request, user_id)
        status, changed = social.friend_request_send(actor=request.user, target_id=friend_id)
        code = 201 if status == "requested" and changed else 200
        return Response({"status": status}, status=code)

    @extend_schema(
        summary="Unfriend, cancel one's request or decline theirs.",
        responses={204: None}, tags=["people"], description="Unfriend, cancel or decline.",
    )
    @raises(NotYours, SelfTarget, UserNotFound, NothingToRemove)
    def delete(self, request, user_id: int, friend_id: int):
        _own(request, user_id)
        social.friend_remove(actor=request.user, target_id=friend_id)
        return Response(status=204)


@extend_schema_view(get=extend_schema(summary="The users the caller blocked, by name."))
class BlocksView(_OwnUserList):
    selector = staticmethod(selectors.block_list)


class BlockView(APIView):
    @extend_schema(
        summary="Block a user: ends any friendship or request between the two.",
        request=None, responses={201: BlockStatusOutput, 200: BlockStatusOutput}, tags=["people"],
    )
    @raises(NotYours, SelfTarget, UserNotFound)
    def post(self, request, user_id: int, blocked_id: int):
        _own(request, user_id)
        created = social.block_add(actor=request.user, target_id=blocked_id)
        return Response({"status": "blocked"}, status=201 if created else 200)

    @extend_schema(summary="Unblock a user.", responses={204: None}, tags=["people"])
    @raises(NotYours, SelfTarget, UserNotFound, NotBlocked)
    def delete(self, request, user_id: int, blocked_id: int):
        _own(request, user_id)
        social.block_remove(actor=request.user, target_id=blocked_id)
        return Response(status=204)
