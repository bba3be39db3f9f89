from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services, social
from accounts.throttles import FriendRequestThrottle, LoginFailures, SignupLoginThrottle
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
)
from accounts.shapes import session_data
from chatserver.errors import NotYours


class SignupView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [SignupLoginThrottle]

    @extend_schema(request=SignupInput, responses={201: SessionOutput}, tags=["accounts"])
    def post(self, request):
        data = SignupInput(data=request.data)
        data.is_valid(raise_exception=True)
        device, token = services.user_signup(**data.validated_data)
        return Response(session_data(device=device, request=request, token=token), status=201)


class LoginView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [SignupLoginThrottle]

    @extend_schema(request=CredentialsInput, responses={200: SessionOutput}, tags=["accounts"])
    def post(self, request):
        data = CredentialsInput(data=request.data)
        data.is_valid(raise_exception=True)
        with LoginFailures(data.validated_data["username"]):
            device, token = services.user_login(**data.validated_data)
        return Response(session_data(device=device, request=request, token=token))


class LogoutView(APIView):
    @extend_schema(request=None, responses={204: None}, tags=["accounts"])
    def post(self, request):
        services.device_logout(device=request.auth)
        return Response(status=204)


class MeView(APIView):
    @extend_schema(responses={200: SessionOutput}, tags=["accounts"])
    def get(self, request):
        return Response(session_data(device=request.auth, request=request))

    @extend_schema(
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

    @extend_schema(request=PushTokenInput, responses={200: SessionOutput}, tags=["accounts"])
    def put(self, request):
        data = PushTokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.push_token_set(device=request.auth, token=data.validated_data["token"])
        return Response(session_data(device=request.auth, request=request))

    @extend_schema(responses={204: None}, tags=["accounts"])
    def delete(self, request):
        services.push_token_clear(device=request.auth)
        return Response(status=204)


class UserDetailView(APIView):
    @extend_schema(responses={200: UserOutput}, tags=["accounts"])
    def get(self, request, user_id: int):
        return Response(UserOutput(selectors.user_get_visible(user_id=user_id, caller=request.user)).data)


def _own(request, user_id: int) -> None:
    if user_id != request.user.id:
        raise NotYours()


class UserSearchView(generics.ListAPIView):
    """Users whose name starts with `search` (any case); never those who blocked you."""

    serializer_class = UserOutput

    @extend_schema(
        parameters=[OpenApiParameter("search", str, description="Prefix of the username.")],
        tags=["people"],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        prefix = self.request.query_params.get("search", "")
        return selectors.user_search(caller=self.request.user, prefix=prefix[:32])


class _OwnUserList(generics.ListAPIView):
    """A paginated list of users that belongs to the caller (`/accounts/<me>/...`)."""

    serializer_class = UserOutput
    selector = None

    @extend_schema(tags=["people"])
    def get(self, request, *args, **kwargs):
        _own(request, kwargs["user_id"])
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return self.selector(user=self.request.user)


class FriendsView(_OwnUserList):
    selector = staticmethod(selectors.friend_list)


class FriendRequestsView(APIView):
    @extend_schema(responses={200: FriendRequestsOutput}, tags=["people"])
    def get(self, request, user_id: int):
        _own(request, user_id)
        requests = selectors.friend_requests(user=request.user)
        return Response({k: UserOutput(v, many=True).data for k, v in requests.items()})


class FriendView(APIView):
    throttle_classes = [FriendRequestThrottle]  # POST only

    @extend_schema(
        request=None,
        responses={201: FriendStatusOutput, 200: FriendStatusOutput},
        tags=["people"],
        description="Ask for friendship (201 requested), or accept their pending request "
        "(200 friends). Asking again answers 200 with the current status.",
    )
    def post(self, request, user_id: int, friend_id: int):
        _own(request, user_id)
        status, changed = social.friend_request_send(actor=request.user, target_id=friend_id)
        code = 201 if status == "requested" and changed else 200
        return Response({"status": status}, status=code)

    @extend_schema(responses={204: None}, tags=["people"], description="Unfriend, cancel or decline.")
    def delete(self, request, user_id: int, friend_id: int):
        _own(request, user_id)
        social.friend_remove(actor=request.user, target_id=friend_id)
        return Response(status=204)


class BlocksView(_OwnUserList):
    selector = staticmethod(selectors.block_list)


class BlockView(APIView):
    @extend_schema(request=None, responses={201: BlockStatusOutput, 200: BlockStatusOutput}, tags=["people"])
    def post(self, request, user_id: int, blocked_id: int):
        _own(request, user_id)
        created = social.block_add(actor=request.user, target_id=blocked_id)
        return Response({"status": "blocked"}, status=201 if created else 200)

    @extend_schema(responses={204: None}, tags=["people"])
    def delete(self, request, user_id: int, blocked_id: int):
        _own(request, user_id)
        social.block_remove(actor=request.user, target_id=blocked_id)
        return Response(status=204)
