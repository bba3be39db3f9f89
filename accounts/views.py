from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import avatars, deletion, schema, selectors, services, social
from accounts.errors import (
    AvatarNotFound,
    BlockedError,
    DeviceNotFound,
    InvalidCredentials,
    NotBlocked,
    NothingToRemove,
    SelfTarget,
    UsernameTaken,
    UserNotFound,
    WrongPassword,
)
from accounts.throttles import FriendRequestThrottle, LoginFailures, PasswordCheckThrottle, SignupLoginThrottle
from accounts.serializers import (
    AccountDeleteInput,
    AvatarInput,
    BlockStatusOutput,
    CredentialsInput,
    DeviceOutput,
    PasswordChangeInput,
    FriendRequestsOutput,
    FriendStatusOutput,
    SessionOutput,
    PushTokenInput,
    SettingsInput,
    SignupInput,
    UserOutput,
    UserSearchQuery,
)
from accounts.shapes import session_data
from chatserver.errors import InvalidInput, NotYours
from chatserver.files import stored_file_response
from chatserver.openapi import raises


def _device_name(request, data: dict) -> dict:
    """What the device list calls a new device: its device_name, else its User-Agent."""
    if not data.get("device_name"):
        agent = request.META.get("HTTP_USER_AGENT", "")
        data = {**data, "device_name": "".join(c for c in agent if c.isprintable())[:100]}
    return data


class SignupView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [SignupLoginThrottle]

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
        device, token = services.user_signup(**_device_name(request, data.validated_data))
        return Response(session_data(device=device, request=request, token=token), status=201)


class LoginView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [SignupLoginThrottle]

    @extend_schema(
        summary="Sign a new device in: its own token and MQTT credentials.",
        description="Each login is a new device with its own token and MQTT account; the user's "
        "other devices stay signed in. A wrong password and an unknown name get the same 401, "
        "in the same time. Throttled per client address (`AUTH_THROTTLE_RATE`), and failed logins "
        "per username (`LOGIN_FAILURE_THROTTLE_RATE`).",
        request=CredentialsInput, responses={200: SessionOutput}, tags=["accounts"],
    )
    @raises(InvalidCredentials)
    def post(self, request):
        data = CredentialsInput(data=request.data)
        data.is_valid(raise_exception=True)
        with LoginFailures(data.validated_data["username"]):
            device, token = services.user_login(**_device_name(request, data.validated_data))
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
        summary="Change the user's settings and display name.",
        examples=[
            OpenApiExample("Read receipts off", value={"read_receipts": False}, request_only=True),
            OpenApiExample("The session, changed", value={**schema.ME, "settings": {
                "read_receipts": False, "push_previews": True}}, response_only=True),
        ],
        request=SettingsInput,
        responses={200: SessionOutput},
        tags=["accounts"],
        description="`read_receipts: false` stops others from seeing how far you read; "
        "`push_previews: false` keeps message text out of your pushes; `display_name` is "
        "shown instead of the username (friends and chat partners get `user.updated`). "
        "Any other field is a 400 naming it.",
    )
    def patch(self, request):
        data = SettingsInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_settings_update(actor=request.user, **data.validated_data)
        return Response(session_data(device=request.auth, request=request))

    @extend_schema(
        summary="Delete one's account, confirmed by its password.",
        request=AccountDeleteInput,
        responses={204: None},
        tags=["accounts"],
        description="Delete your account, confirmed by your password (403 `wrong_password`). "
        "Every device is signed out; groups are left (ownership passes on); direct chats "
        "and messages stay for the others under \"Deleted user\"; friendships, requests "
        "and blocks end. The username is never free again.",
    )
    @raises(WrongPassword)
    def delete(self, request):
        data = AccountDeleteInput(data=request.data)
        data.is_valid(raise_exception=True)
        deletion.user_delete(actor=request.user, password=data.validated_data["password"])
        return Response(status=204)

    def get_throttles(self):
        # Deleting is confirmed by a password: as limited as logins (PATCH is not).
        if self.request.method == "DELETE":
            return [PasswordCheckThrottle()]
        return super().get_throttles()


class PasswordView(APIView):
    throttle_classes = [PasswordCheckThrottle]

    @extend_schema(
        summary="Change one's password; the other devices are signed out unless kept.",
        examples=[
            OpenApiExample("A new password, the other devices signed out", value={
                "current_password": "correct horse battery", "new_password": "battery staple horse"},
                request_only=True),
            OpenApiExample("This device's session", value=schema.ME, response_only=True),
        ],
        request=PasswordChangeInput,
        responses={200: SessionOutput},
        tags=["accounts"],
        description="Change your password (`current_password`: 403 `wrong_password` if "
        "wrong). Your other devices are signed out unless `keep_other_devices: true`; this "
        "one stays signed in.",
    )
    @raises(WrongPassword)
    def post(self, request):
        data = PasswordChangeInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_password_change(actor=request.user, device=request.auth, **data.validated_data)
        return Response(session_data(device=request.auth, request=request))


class DevicesView(APIView):
    @extend_schema(
        summary="The caller's devices, newest first.",
        responses={200: DeviceOutput(many=True)},
        tags=["accounts"],
        description="Your devices (each login is one), newest first; `current` is the calling one.",
    )
    def get(self, request):
        devices = selectors.device_list(user=request.user)
        return Response(DeviceOutput(devices, many=True, context={"current": request.auth}).data)


class DeviceView(APIView):
    @extend_schema(
        summary="Sign one of one's devices out.",
        responses={204: None},
        tags=["accounts"],
        description="Sign one of your devices out (as logout does on it); another user's device is 404.",
    )
    @raises(DeviceNotFound)
    def delete(self, request, device_id: int):
        services.device_sign_out(actor=request.user, device_id=device_id)
        return Response(status=204)


class MyAvatarView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        summary="Set one's avatar from an image.",
        examples=[OpenApiExample("The session, with the avatar", value=schema.ME, response_only=True)],
        request={"multipart/form-data": AvatarInput},
        responses={200: SessionOutput},
        tags=["accounts"],
        description="Set your avatar: an image (re-encoded by the server, metadata dropped, "
        "with a thumbnail); anything else is 400 on `file`. Friends and chat partners get "
        "`user.updated`.",
    )
    def put(self, request):
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        if declared > avatars.MAX_SIZE + 64 * 1024:
            raise InvalidInput("file", "The picture is over 5 MB.")
        data = AvatarInput(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > avatars.MAX_SIZE:
            raise InvalidInput("file", "The picture is over 5 MB.")
        services.user_avatar_set(actor=request.user, upload=upload)
        return Response(session_data(device=request.auth, request=request))

    @extend_schema(
        summary="Remove one's avatar.",
        request=None, responses={204: None}, tags=["accounts"], description="Remove your avatar.",
    )
    def delete(self, request):
        services.user_avatar_clear(actor=request.user)
        return Response(status=204)


class AvatarView(APIView):
    """A person's avatar (or its thumbnail), to anyone signed in it has not blocked."""

    thumbnail = False

    @extend_schema(
        summary="A person's avatar (WebP).",
        parameters=[OpenApiParameter("v", str, description="The picture's version, as `avatar.url` gives it.")],
        responses={(200, "image/webp"): OpenApiTypes.BINARY},
        tags=["people"],
    )
    @raises(UserNotFound, AvatarNotFound)
    def get(self, request, user_id: int):
        user = selectors.user_get_visible(user_id=user_id, caller=request.user)
        # The URL names the version (`?v=`): a new picture is a new URL, so cache a day.
        return stored_file_response(user.avatar_thumbnail if self.thumbnail else user.avatar,
                                    content_type=avatars.MIME, missing=AvatarNotFound, max_age=86400)


@extend_schema_view(get=extend_schema(summary="A person's avatar thumbnail (WebP)."))
class AvatarThumbnailView(AvatarView):
    thumbnail = True


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

    @extend_schema(
        summary="Stop pushes to this device.",
        responses={204: None}, tags=["accounts"],
    )
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

    @extend_schema(
        summary="A list of users of the caller's own, by name.",
        tags=["people"],
    )
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
    throttle_classes = [FriendRequestThrottle]  # POST only

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

    @extend_schema(
        summary="Unblock a user.",
        responses={204: None}, tags=["people"],
    )
    @raises(NotYours, SelfTarget, UserNotFound, NotBlocked)
    def delete(self, request, user_id: int, blocked_id: int):
        _own(request, user_id)
        social.block_remove(actor=request.user, target_id=blocked_id)
        return Response(status=204)
