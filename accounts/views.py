from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.serializers import (
    CredentialsInput,
    SessionOutput,
    SignupInput,
    UserOutput,
    session_data,
)


class SignupView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    @extend_schema(request=SignupInput, responses={201: SessionOutput}, tags=["accounts"])
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

    @extend_schema(request=CredentialsInput, responses={200: SessionOutput}, tags=["accounts"])
    def post(self, request):
        data = CredentialsInput(data=request.data)
        data.is_valid(raise_exception=True)
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


class UserDetailView(APIView):
    @extend_schema(responses={200: UserOutput}, tags=["accounts"])
    def get(self, request, user_id: int):
        return Response(UserOutput(selectors.user_get(user_id=user_id)).data)
