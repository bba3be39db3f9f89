from django.db import DatabaseError, connection
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from chatserver import outbox, push
from chatserver.models import DeadLetter, OutboxEvent


class HealthView(APIView):
    """200 while the database answers (messages are accepted and queued even when the
    broker is down), 503 when it does not. The body tells each part's state."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(),
                    "database": serializers.CharField(),
                    "relay": serializers.CharField(),
                    "broker": serializers.CharField(),
                    "outbox_pending": serializers.IntegerField(),
                    "dead_letters": serializers.IntegerField(
                        help_text="outbox rows the relay set aside (manage.py outbox_dead_letters)"
                    ),
                    "push": serializers.ChoiceField(choices=["on", "off"], help_text="FCM configured"),
                    "push_pending": serializers.IntegerField(help_text="pushes queued or to be retried"),
                    "push_failed": serializers.IntegerField(help_text="pushes given up"),
                },
            ),
            503: inline_serializer(
                "HealthUnavailable",
                {
                    "status": serializers.CharField(),
                    "database": serializers.CharField(),
                    "relay": serializers.CharField(),
                    "broker": serializers.CharField(),
                },
            ),
        },
        summary="Whether the server can take messages, and the state of its parts.",
        examples=[
            OpenApiExample("Serving", status_codes=[200], value={
                "status": "ok", "database": "up", "relay": "running", "broker": "up", "outbox_pending": 0,
                "dead_letters": 0, "push": "on", "push_pending": 0, "push_failed": 0}),
            OpenApiExample("The database is down", status_codes=[503], value={
                "status": "unavailable", "database": "down", "relay": "unknown", "broker": "unknown"}),
        ],
        tags=["health"],
    )
    def get(self, request):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            state = outbox.relay_status()
            pending = OutboxEvent.objects.count()
            dead = DeadLetter.objects.count()
            pushes = push.status()
        except DatabaseError:
            body = {"status": "unavailable", "database": "down", "relay": "unknown", "broker": "unknown"}
            return Response(body, status=503)
        ok = state["broker"] == "up"
        body = {"status": "ok" if ok else "degraded", "database": "up", **state, "outbox_pending": pending,
                "dead_letters": dead, **pushes}
        return Response(body)
