from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """One unit of work for the relay, written in the transaction of the change it reports.

    The relay applies `access` (broker grants and revocations, in order), then publishes
    `payload` to `chat/users/<id>` for every id in `user_ids` and, when `chat_id` is set,
    to `chat/chats/<chat_id>`; once the broker has acknowledged all of it, the row is
    deleted. Rows are handled in id order; within a chat, ids follow commit order because
    every change to a chat locks the chat's row before it writes here.

    One row per change (not per recipient): fan-out happens in the relay, which keeps the
    write path as short for a 1,000-member group as for a direct chat.

    `partition_key` says which relay sends the row (`chatserver.outbox.partition_key`: the
    chat of a chat's rows, else the user the row is about); rows with the same key keep
    their order. With RELAY_PARTITIONS=N, the relay of partition `partition_key % N` sends
    it: `partition`, stored with the row and indexed with the id, so that a relay's
    SELECT is a range of that index (on `partition_key % N`, PostgreSQL scanned and
    sorted the whole backlog for every batch of every relay); relays set it again for
    rows queued under another N when they start.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    access = models.JSONField(default=list, blank=True)
    payload = models.TextField(blank=True)
    user_ids = models.JSONField(default=list, blank=True)
    chat_id = models.BigIntegerField(null=True, blank=True)
    partition_key = models.BigIntegerField(default=0, db_default=0)
    partition = models.SmallIntegerField(default=0, db_default=0)

    class Meta:
        db_table = "chat_outbox"
        indexes = [models.Index(fields=["partition", "id"], name="chat_outbox_partition_idx")]

    def __str__(self) -> str:
        return f"outbox #{self.id}"


class RelayStatus(models.Model):
    """A relay's heartbeat: whether its broker connection is open, and when the broker
    last answered on it (a round trip: a PUBACK, a command response, a CONNACK).

    One row per partition (id = partition + 1: with one partition, the row id 1 as
    before), refreshed every second or so by the relay active for that partition;
    `/health/` and the request paths that wait for broker grants read the rows of
    partitions 0..RELAY_PARTITIONS-1 (`chatserver.outbox.relay_status`).
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    broker_connected = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    broker_answered_at = models.DateTimeField(null=True, blank=True)
    # Since when the broker has answered the relay without a gap longer than
    # `outbox.BROKER_ANSWER_MAX_AGE` (null while it does not): delivery has been possible
    # since then, so a backlog older than that is an outage's, not overload
    # (chatserver/backpressure.py).
    broker_up_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        db_table = "chat_relay_status"


class DeadLetter(models.Model):
    """An outbox row the relay set aside: it could not be translated into broker work (a
    bad access operation, a bad user id...), or the broker refused it for good (a payload
    too large, a dynsec command failing for another reason than "already so").

    The row's own fields are kept as they were (`outbox_id` is its id in the outbox), with
    the reason in `error`. `manage.py outbox_dead_letters` lists them, replays them (back
    into the outbox, under new ids: at the end of the line) or discards them.
    """

    id = models.BigAutoField(primary_key=True)
    outbox_id = models.BigIntegerField()
    created_at = models.DateTimeField()
    access = models.JSONField(default=list, blank=True)
    payload = models.TextField(blank=True)
    user_ids = models.JSONField(default=list, blank=True)
    chat_id = models.BigIntegerField(null=True, blank=True)
    partition_key = models.BigIntegerField(default=0, db_default=0)
    error = models.TextField()
    failed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "chat_dead_letter"

    def __str__(self) -> str:
        return f"dead letter #{self.id} (outbox #{self.outbox_id})"


class PushJob(models.Model):
    """A push to send (chatserver/push.py): queued in the transaction of the change it
    is about, taken by the push worker once `not_before` has come.

    `kind` names the builder that turns `data` into deliveries (registered by an app), or
    is `retry`: then `data` is one delivery (device, token, FCM message) to send again,
    `attempts` counts the sends so far and `last_error` says why the last one failed. A
    job leaves the table once sent; one given up stays, `failed`, for the operator.
    """

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=32)
    data = models.JSONField(default=dict)
    attempts = models.PositiveIntegerField(default=0)
    not_before = models.DateTimeField(default=timezone.now)
    failed = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)

    class Meta:
        db_table = "chat_push_job"
        indexes = [models.Index(fields=["failed", "not_before"], name="chat_push_job_due_idx")]

    def __str__(self) -> str:
        return f"push job #{self.id} ({self.kind})"


class RateBucket(models.Model):
    """One rate-limit bucket in the database (chatserver/ratelimit.py; Redis holds them
    instead when REDIS_URL is set): `tat` is when the bucket is full again, in seconds
    since the epoch. A row whose `tat` has passed is the same as no row."""

    key = models.CharField(max_length=200, primary_key=True)
    tat = models.FloatField(db_index=True)

    class Meta:
        db_table = "chat_rate_bucket"
