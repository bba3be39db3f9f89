"""The message POST's fast path: the commonest request of all, answered without DRF's
dispatch, and everything else by the DRF view, word for word as before.

The commonest request is a JSON text message (`{content}` or `{content, client_id}`)
from a device in the token cache, within its rate limit, accepted. DRF's dispatch costs it
~150-170 us of CPU in the web process (its Request, content negotiation, the
authentication, permission and throttle objects, the Response's finalizing: measured on
this 2-core machine against a plain Django view, README "Bench numbers"), where the
whole request costs ~2 ms. This path does what the DRF view does for that request with
the same parts (`device_cached`, `message_create_plain`, the `send` bucket,
`message_send`, `shapes.message_output`, the orjson renderer) and answers with the same
bytes and headers.

Anything else goes to `ChatMessagesView` untouched, before anything is counted or
written: another method or media type, an `Accept` or `?format=` that is not plain JSON,
no token or one the cache does not hold, a body that is not such a message, back-pressure,
a full bucket. A send that is refused once counted (not a member, blocked, a revoked
token...) is answered by the DRF view's own `handle_exception` and `finalize_response`
(`_refusal`), as its dispatch would. So every refusal, every error envelope and every
header of an answer other than this one is DRF's, and the OpenAPI schema is the DRF
view's (this wrapper keeps its `cls`).
"""

from __future__ import annotations

import functools

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from rest_framework.authentication import get_authorization_header
from rest_framework.permissions import IsAuthenticated
from rest_framework.settings import api_settings
from rest_framework.utils import json

from accounts.authentication import BearerTokenAuthentication, DeviceTokenAuthentication, device_cached
from accounts.models import hash_token
from chats import shapes
from chats.serializers import message_create_plain
from chats.services.message_send import message_send
from chats.throttles import SendThrottle, UploadThrottle
from chatserver import backpressure, ratelimit
from chatserver.errors import Overloaded
from chatserver.renderers import OrjsonRenderer
from chatserver.throttling import DeliveryBackpressure

_KEYWORDS = {DeviceTokenAuthentication.keyword.lower().encode(), BearerTokenAuthentication.keyword.lower().encode()}
_ACCEPTED = {None, "", "*/*", "application/json", "application/*"}

# The DRF view's policies this path carries out in its stead (UploadThrottle counts
# multipart POSTs only, which never come here). A view whose policies differ would have
# them skipped: `with_fast_send` refuses it, so that the two change together.
IMPLEMENTS = {
    "authentication_classes": [DeviceTokenAuthentication, BearerTokenAuthentication],
    "permission_classes": [IsAuthenticated],
    "throttle_classes": [DeliveryBackpressure, SendThrottle, UploadThrottle],
    "renderer_classes": [OrjsonRenderer],
}


def with_fast_send(drf_view, view_class):
    """`drf_view` (`ChatMessagesView.as_view()`) with the fast path in front of it;
    ImproperlyConfigured if the view's policies are not those the path carries out."""
    for attribute, implemented in IMPLEMENTS.items():
        if list(getattr(view_class, attribute)) != implemented:
            raise ImproperlyConfigured(
                f"chats.send_view answers for {view_class.__name__} with its {attribute} = {implemented}, "
                f"not {list(getattr(view_class, attribute))}: change them together"
            )

    @functools.wraps(drf_view)  # its cls, initkwargs and csrf_exempt: the schema and CSRF see the DRF view
    def view(request: HttpRequest, *args, **kwargs):
        response = fast_send(request, view_class, **kwargs)
        return drf_view(request, *args, **kwargs) if response is None else response

    return view


def fast_send(request: HttpRequest, view_class, *, chat_id: int) -> HttpResponse | None:
    """The answer to a plain accepted JSON text message, or None: the DRF view answers."""
    if request.method != "POST" or request.content_type != "application/json":
        return None
    if request.content_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        return None
    if request.META.get("HTTP_ACCEPT") not in _ACCEPTED or api_settings.URL_FORMAT_OVERRIDE in request.GET:
        return None
    device = _cached_device(request)
    if device is None:
        return None
    try:
        data = json.loads(request.body.decode("utf-8"))
    except Exception:  # not JSON, too deep, too large (RequestDataTooBig)...: DRF words it
        return None
    validated = message_create_plain(data)
    if validated is None:
        return None
    try:
        backpressure.check()
    except Overloaded:
        return None
    throttle = SendThrottle()  # the DRF view's order: back-pressure, then the bucket
    if throttle.limit is not None and not ratelimit.take(throttle.bucket(str(device.user_id)), throttle.limit).allowed:
        return None  # counted nothing: the DRF view refuses it (429, Retry-After)
    try:
        message, created = message_send(
            actor=device.user, chat_id=chat_id, content=validated["content"], client_id=validated["client_id"],
            device=device,
        )
    except Exception as exc:
        return _refusal(request, view_class, exc, device=device, chat_id=chat_id)
    return HttpResponse(
        OrjsonRenderer().render(shapes.message_output(message)),
        status=201 if created else 200,
        headers=_headers(view_class),
    )


def _cached_device(request: HttpRequest):
    """The device of `Authorization: Token|Bearer <token>` if the token cache holds it
    (DRF's TokenAuthentication reads the header the same way)."""
    auth = get_authorization_header(request).split()
    if len(auth) != 2 or auth[0].lower() not in _KEYWORDS:
        return None
    try:
        token = auth[1].decode()
    except UnicodeError:
        return None
    return device_cached(hash_token(token))


def _refusal(request: HttpRequest, view_class, exc: Exception, *, device, chat_id: int):
    """The DRF view's answer to `exc` raised by the send, as its dispatch would give it
    after authenticating `device` (its `handle_exception`: the device confirmed, the
    error envelope; `finalize_response`); an exception it does not handle is raised."""
    view = view_class()
    view.setup(request, chat_id=chat_id)  # as Django's as_view() does (HEAD is GET's)
    view.format_kwarg = None
    view.request = drf_request = view.initialize_request(request, chat_id=chat_id)
    view.headers = view.default_response_headers
    drf_request.user, drf_request.auth = device.user, device
    drf_request.accepted_renderer, drf_request.accepted_media_type = view.perform_content_negotiation(drf_request)
    return view.finalize_response(drf_request, view.handle_exception(exc), chat_id=chat_id)


@functools.cache
def _headers(view_class) -> dict:
    """What the DRF view's answer carries besides the body and the middleware's headers:
    its renderer's media type (no charset: JSON is UTF-8), and its `Allow`."""
    view = view_class()
    view.setup(HttpRequest())  # as Django's as_view() does (HEAD is GET's)
    return {"Content-Type": OrjsonRenderer.media_type, **view.default_response_headers}
