"""Django decides every RabbitMQ login, vhost, queue and topic check (BROKER=rabbitmq).

RabbitMQ's HTTP auth backend (rabbitmq_auth_backend_http, `auth_http.http_method = post`)
POSTs a form to `/broker-auth/<BROKER_AUTH_SECRET>/<kind>` and takes a plain-text `allow`
or `deny`. The front server serves these paths only on a listener bound to
127.0.0.1:BROKER_AUTH_PORT (front/nginx.conf); its public listener answers 404 for
`/broker-auth/`, and a wrong secret is a 404 here (compared in constant time).

What RabbitMQ 3.10.8 asks (measured with paho 3.1.1 clients; tests/chatserver/test_broker_auth.py
and test_rabbitmq_access.py):

    user      username, password, vhost, client_id    on every CONNECT (twice: once to
                                                      authenticate, once to authorize)
    vhost     username, vhost, ip, client_id          on every CONNECT
    resource  username, vhost, resource, name,        CONNECT: configure, read and write on
              permission, client_id                   the session queue
                                                      `mqtt-subscription-<client id>qos1`
                                                      (qos0 for a clean session); SUBSCRIBE:
                                                      read on exchange amq.topic; PUBLISH
                                                      (and the Last Will): write on it
    topic     username, vhost, resource, name,        SUBSCRIBE: read; PUBLISH: write; the
              permission, routing_key,                routing key is the MQTT topic with
              variable_map.client_id, ...             `/` and `.` swapped, wildcards literal

The rules (all here; the apps supply only facts, through the two hooks below, since
chatserver imports no app):
- login: `username` names an existing device of an active user (`register_device_lookup`),
  `password` is its MQTT password (compared in constant time; it is an HMAC, so no
  password hash on this path) and `client_id` is exactly that device's client id, so
  nobody takes over or kicks another device's session. The server's own account
  (MQTT_ADMIN_USERNAME) is a RabbitMQ internal user, checked before this backend, and is
  refused here whatever it sends.
- vhost `/` only; queues: the device's own session queues only, and exchange amq.topic
  for read (subscribe) and write (publish); nothing else.
- topics: read only the user's topic (`broker_access.user_topic`) and the topics of a chat
  the user is a member of now (`register_chat_member`; `broker_access.chat_topics`: its
  stream and its typing); write only its own presence topic
  (`broker_access.presence_topic`, its Last Will included); `#` and `*` never.
- every check but the login also requires the device to exist, for an active user, with
  the client id the connection presents: a cached answer aside (RABBITMQ_AUTH_CACHE_TTL),
  a signed-out device can do nothing more.
- refused logins per account: MQTT_LOGIN_FAILURES are tolerated within MQTT_LOGIN_WINDOW;
  the next one starts a cooldown of MQTT_LOGIN_COOLDOWN during which every login of that
  account is refused unchecked (as broker/login_guard.c does on Mosquitto). Counted in the
  shared rate-limit buckets (chatserver/ratelimit.py), per username: other devices have
  usernames of their own and are never affected. Only failures are written; a good
  login costs two reads (the device, the cooldown bucket).

Every check is one or two indexed queries. Nothing here answers 500 for a broker's
request: a malformed one gets 400 (the broker takes any non-200 as a refusal), and a
database that cannot be reached answers `deny` (logged), never `allow`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from chatserver import ratelimit
from chatserver.broker_access import (
    RABBITMQ_EXCHANGE,
    parse_event_topic,
    presence_topic,
    rabbitmq_session_queues,
    routing_key_topic,
    user_topic,
)
from chatserver.exception_handler import DATABASE_UNAVAILABLE, error_body

logger = logging.getLogger("chatserver.broker_auth")

ALLOW = "allow"
DENY = "deny"
# Longer fields than these are no device's: refused as malformed.
MAX_FIELD = 255
MAX_PASSWORD = 1024


# --- what the apps supply ----------------------------------------------------------------


@dataclass(frozen=True)
class BrokerDevice:
    """A device account as the broker may see it: an existing device of an active user."""

    user_id: int
    client_id: str
    password: str  # its MQTT password, to compare with what the client sent


DeviceLookup = Callable[[str], "BrokerDevice | None"]
ChatMember = Callable[[int, int], bool]  # (user_id, chat_id) -> a member now?

_hooks: dict[str, Callable] = {}


def register_device_lookup(lookup: DeviceLookup) -> None:
    """`lookup(username)`: the device of that MQTT username if it exists and its user is
    active, else None (one indexed query)."""
    _hooks["device"] = lookup


def register_chat_member(member: ChatMember) -> None:
    """`member(user_id, chat_id)`: whether the user is a member of the chat now."""
    _hooks["chat_member"] = member


def _hook(name: str) -> Callable:
    try:
        return _hooks[name]
    except KeyError:
        raise RuntimeError(f"no broker-auth {name} hook: an app registers it in its ready()") from None


# --- the broker's requests, typed ----------------------------------------------------------


class Malformed(ValueError):
    """A request that is not what the broker sends: 400."""


def _field(data, name: str, *, limit: int = MAX_FIELD, required: bool = True) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise Malformed(f"missing field {name!r}")
        return ""
    if len(value) > limit or "\x00" in value:
        raise Malformed(f"field {name!r} too long or not text")
    return value


@dataclass(frozen=True)
class LoginCheck:
    username: str
    password: str
    vhost: str
    client_id: str

    @classmethod
    def parse(cls, data) -> LoginCheck:
        return cls(
            username=_field(data, "username"),
            password=_field(data, "password", limit=MAX_PASSWORD),
            # The MQTT plugin always sends both; other protocols may not (then: refused).
            vhost=_field(data, "vhost", required=False),
            client_id=_field(data, "client_id", required=False),
        )


@dataclass(frozen=True)
class VhostCheck:
    username: str
    vhost: str
    client_id: str

    @classmethod
    def parse(cls, data) -> VhostCheck:
        return cls(
            username=_field(data, "username"),
            vhost=_field(data, "vhost"),
            client_id=_field(data, "client_id", required=False),
        )


RESOURCES = frozenset({"queue", "exchange", "topic"})
PERMISSIONS = frozenset({"configure", "read", "write"})


def _choice(data, name: str, choices: frozenset[str]) -> str:
    value = _field(data, name)
    if value not in choices:
        raise Malformed(f"field {name!r} must be one of {sorted(choices)}")
    return value


@dataclass(frozen=True)
class ResourceCheck:
    username: str
    vhost: str
    resource: str
    name: str
    permission: str
    client_id: str

    @classmethod
    def parse(cls, data) -> ResourceCheck:
        return cls(
            username=_field(data, "username"),
            vhost=_field(data, "vhost"),
            resource=_choice(data, "resource", RESOURCES),
            name=_field(data, "name"),
            permission=_choice(data, "permission", PERMISSIONS),
            client_id=_field(data, "client_id", required=False),
        )


@dataclass(frozen=True)
class TopicCheck:
    username: str
    vhost: str
    name: str
    permission: str
    routing_key: str
    client_id: str

    @classmethod
    def parse(cls, data) -> TopicCheck:
        if _field(data, "resource") != "topic":
            raise Malformed("field 'resource' must be 'topic'")
        return cls(
            username=_field(data, "username"),
            vhost=_field(data, "vhost"),
            name=_field(data, "name"),
            permission=_choice(data, "permission", PERMISSIONS),
            routing_key=_field(data, "routing_key"),
            client_id=_field(data, "variable_map.client_id", required=False),
        )


# --- the rules -----------------------------------------------------------------------------

VHOST = "/"


def _is_admin(username: str) -> bool:
    return hmac.compare_digest(username.encode(), settings.MQTT_ADMIN_USERNAME.encode())


def _device(username: str, client_id: str) -> BrokerDevice | None:
    """The device behind a connection: it exists, its user is active, and the connection
    presents its client id."""
    if _is_admin(username) or not client_id:
        return None
    device = _hook("device")(username)
    if device is None or device.client_id != client_id:
        return None
    return device


def _login_limits() -> tuple[ratelimit.Limit, ratelimit.Limit]:
    failures = ratelimit.Limit(
        rate=settings.MQTT_LOGIN_FAILURES, period=settings.MQTT_LOGIN_WINDOW, burst=settings.MQTT_LOGIN_FAILURES
    )
    cooldown = ratelimit.Limit(rate=1, period=settings.MQTT_LOGIN_COOLDOWN, burst=1)
    return failures, cooldown


def decide_login(check: LoginCheck) -> bool:
    if _is_admin(check.username) or check.vhost not in ("", VHOST) or not check.client_id:
        return False
    key = check.username.lower()
    failures, cooldown = _login_limits()
    if not ratelimit.peek(f"broker_login_cooldown:{key}", cooldown).allowed:
        return False  # unchecked, like login_guard.c: a flood costs no comparison
    device = _hook("device")(check.username)
    ok = (
        device is not None
        # Constant time on the secret; the client id and username are not secret.
        and hmac.compare_digest(check.password.encode(), device.password.encode())
        and check.client_id == device.client_id
    )
    if not ok and not ratelimit.take(f"broker_login_failure:{key}", failures).allowed:
        ratelimit.take(f"broker_login_cooldown:{key}", cooldown)
        logger.warning("MQTT logins of %s refused for %s s: too many failures", check.username,
                       settings.MQTT_LOGIN_COOLDOWN)
    return ok


def decide_vhost(check: VhostCheck) -> bool:
    return check.vhost == VHOST and _device(check.username, check.client_id) is not None


def decide_resource(check: ResourceCheck) -> bool:
    if check.vhost != VHOST:
        return False
    if check.resource == "queue":
        # configure (declare), read (consume), write (bind): its own session queues only.
        if check.name not in rabbitmq_session_queues(check.client_id):
            return False
    elif check.resource == "exchange":
        # read: bind a queue to it (SUBSCRIBE); write: publish to it (PUBLISH, Last Will).
        if check.name != RABBITMQ_EXCHANGE or check.permission not in ("read", "write"):
            return False
    else:
        return False
    return _device(check.username, check.client_id) is not None


def decide_topic(check: TopicCheck) -> bool:
    if check.vhost != VHOST or check.name != RABBITMQ_EXCHANGE:
        return False
    topic = routing_key_topic(check.routing_key)
    if topic is None:  # a wildcard, or not a topic at all
        return False
    device = _device(check.username, check.client_id)
    if device is None:
        return False
    if check.permission == "write":
        return topic == presence_topic(device.user_id, device.client_id)
    if check.permission != "read":
        return False
    if topic == user_topic(device.user_id):
        return True
    parsed = parse_event_topic(topic)
    return parsed is not None and parsed[0] in ("chats", "typing") and _hook("chat_member")(device.user_id, parsed[1])


CHECKS: dict[str, tuple[type, Callable[..., bool]]] = {
    "user": (LoginCheck, decide_login),
    "vhost": (VhostCheck, decide_vhost),
    "resource": (ResourceCheck, decide_resource),
    "topic": (TopicCheck, decide_topic),
}


# --- the view ------------------------------------------------------------------------------


def _not_found() -> JsonResponse:
    return JsonResponse(error_body("not_found", "No such endpoint."), status=404)


@csrf_exempt
def broker_auth_view(request: HttpRequest, secret: str, kind: str) -> HttpResponse:
    """One check of the broker's: `allow` or `deny` in plain text."""
    if not hmac.compare_digest(secret.encode(), settings.BROKER_AUTH_SECRET.encode()) or kind not in CHECKS:
        return _not_found()
    if request.method != "POST":
        return JsonResponse(error_body("method_not_allowed", "POST only."), status=405)
    parse, decide = CHECKS[kind]
    try:
        check = parse.parse(request.POST)
    except (Malformed, ValueError, MultiPartParserError, RequestDataTooBig, TooManyFieldsSent) as exc:
        return JsonResponse(error_body("bad_request", f"Malformed broker check: {exc}."), status=400)
    try:
        allowed = decide(check)
    except DATABASE_UNAVAILABLE as exc:
        logger.error("broker %s check of %s denied: database unavailable: %s", kind, check.username, exc)
        allowed = False
    return HttpResponse(ALLOW if allowed else DENY, content_type="text/plain")
