from django.conf import settings
from django.db import DatabaseError, connection
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from chatserver import outbox, push
from chatserver.models import DeadLetter


class HealthView(APIView):
    """200 while the database answers (messages are accepted and queued even when the
    broker is down), 503 when it does not. The body tells each part's state; `status` is
    `degraded` while a relay partition has no live relay, the broker has not answered one
    of them for a few seconds (`outbox.BROKER_ANSWER_MAX_AGE`), or the oldest queued event
    waits for longer than HEALTH_MAX_OUTBOX_AGE: accepted messages are not being delivered.
    `relay` and `broker` are over all partitions (RELAY_PARTITIONS); `partitions` has each."""

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
                    "partitions": serializers.ListField(
                        child=inline_serializer("RelayPartition", {
                            "partition": serializers.IntegerField(),
                            "relay": serializers.CharField(),
                            "broker": serializers.CharField(),
                        }),
                        help_text="each relay partition's relay and broker (RELAY_PARTITIONS of them)",
                    ),
                    "outbox_pending": serializers.IntegerField(),
                    "outbox_oldest_age_s": serializers.FloatField(
                        help_text="seconds the oldest queued event has waited (0 when none is)"
                    ),
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
                "status": "ok", "database": "up", "relay": "running", "broker": "up",
                "partitions": [{"partition": 0, "relay": "running", "broker": "up"}], "outbox_pending": 0,
                "outbox_oldest_age_s": 0.0, "dead_letters": 0, "push": "on", "push_pending": 0, "push_failed": 0}),
            OpenApiExample("Messages accepted, not delivered: the broker stopped answering", status_codes=[200],
                           value={"status": "degraded", "database": "up", "relay": "running", "broker": "down",
                                  "partitions": [{"partition": 0, "relay": "running", "broker": "down"}],
                                  "outbox_pending": 42, "outbox_oldest_age_s": 3.2, "dead_letters": 0,
                                  "push": "on", "push_pending": 0, "push_failed": 0}),
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
            pending, oldest_age = outbox.oldest_pending()
            dead = DeadLetter.objects.count()
            pushes = push.status()
        except DatabaseError:
            body = {"status": "unavailable", "database": "down", "relay": "unknown", "broker": "unknown"}
            return Response(body, status=503)
        ok = state["broker"] == "up" and oldest_age <= settings.HEALTH_MAX_OUTBOX_AGE
        body = {"status": "ok" if ok else "degraded", "database": "up", **state, "outbox_pending": pending,
                "outbox_oldest_age_s": round(oldest_age, 3), "dead_letters": dead, **pushes}
        return Response(body)
