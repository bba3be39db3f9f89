"""Access operations on RabbitMQ (BROKER=rabbitmq), over its management HTTP API.

On RabbitMQ the database is the truth: Django answers every login, queue and topic
check from it (chatserver/broker_auth.py), so granting needs nothing from the broker.
What the broker keeps by itself is what must be undone when access ends (RabbitMQ
3.10.8, measured, tests/chatserver/test_rabbitmq_access.py):
- topic permission is checked at SUBSCRIBE only: a live subscription keeps receiving,
  and a persistent session keeps its queue's *binding* through a disconnect (on
  reconnect only the queue is checked, not the topic), so an ex-member would go on
  getting the chat's messages, live or queued while offline;
- the auth cache (`auth_cache.cache_ttl` = RABBITMQ_AUTH_CACHE_TTL) keys on the whole
  argument set: a SUBSCRIBE identical to one allowed less than the TTL ago is allowed
  again without asking Django, and makes a new binding.

So, per operation:

    UserAdd, ChatAdd, MemberGrant, DeviceAdd   nothing (the next check asks Django)
    MemberRevoke(chat, user)   delete the bindings of the user's devices' session queues
                               to the chat's topics (`chat.chats.<chat>` and its typing,
                               `chat.chats.<chat>.typing`) and close those devices'
                               connections
    ChatRemove(chat)           the same for every binding to those routing keys
    DeviceRemove(user, username, client_id)
                               close its connections (logins are never cached: it
                               cannot come back), delete its session queues, and (the
                               relay, `publishes`) clear its retained presence

and for MemberRevoke and ChatRemove one last pass runs once `created_at + TTL +
REVOCATION_MARGIN` has passed, before the relay sends anything after the row: by then no
cached allow from before the change is left, so nothing can bind again. A row handled
later than that (a backlog) needs one pass; otherwise the relay waits out the rest (at
most the TTL, for removals only). The user's devices are found from the broker, not the
database (chatserver imports no app): session queue names carry the client id, which
carries the user and the device (`broker_access.device_client_id`).

Answers: 2xx, or 404 on a delete (already gone), is done; no answer (connection refused,
timeout) or 5xx is AccessUnavailable (the row stays queued and is tried again); anything
else (401, 403, 400) is AccessRefused (the row is set aside). Several management URLs
(a cluster): each is tried in turn while they do not answer, and the one that answered
is tried first from then on (a node that is down costs one refused connection, or for a
host that is gone one `timeout`, once rather than on every request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import requests

from chatserver.broker_access import (
    RABBITMQ_EXCHANGE,
    AccessOp,
    AccessRefused,
    AccessUnavailable,
    ChatRemove,
    Command,
    DeviceRemove,
    MemberRevoke,
    chat_topics,
    device_username,
    parse_device_client_id,
    presence_topic,
    rabbitmq_queue_client_id,
    rabbitmq_session_queues,
    rabbitmq_user_queues_regex,
    topic_routing_key,
)

logger = logging.getLogger("chatserver.rabbit_access")

VHOST = "/"
# Past created_at + TTL, how much longer the last pass waits: the membership ends when its
# transaction commits, a little after the row's created_at, and a SUBSCRIBE allowed from the
# cache just before the TTL ran out binds a few milliseconds later.
REVOCATION_MARGIN = 0.5
PAGE_SIZE = 500


def _q(name: str) -> str:
    return quote(name, safe="")


def _routing_keys(chat: int) -> tuple[str, ...]:
    return tuple(topic_routing_key(topic) for topic in chat_topics(chat))


class RabbitAccess:
    """Access operations as RabbitMQ management API calls (see the module docstring)."""

    def __init__(self, *, urls: list[str], username: str, password: str, cache_ttl: float,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        if not urls:
            raise ValueError("RabbitAccess needs at least one management URL")
        self.urls = [url.rstrip("/") for url in urls]
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.clock = clock
        self.http = requests.Session()
        self.http.auth = (username, password)

    # --- the relay's interface (chatserver.broker_access.Access) ----------------------

    def baseline(self) -> list[Command]:
        return []

    def commands(self, op: AccessOp) -> list[Command]:
        return []

    @staticmethod
    def publishes(op: AccessOp) -> list[tuple[str, bytes]]:
        """A removed device leaves no Last Will (its connection is closed by the server),
        so its retained presence is cleared by an empty retained message."""
        if isinstance(op, DeviceRemove):
            return [(presence_topic(op.user, op.client_id), b"")]
        return []

    def is_benign(self, command: Command, error: str) -> bool:
        return False

    def is_not_yet(self, command: Command, error: str) -> bool:
        return False  # no commands: grants are Django's answers

    @staticmethod
    def applies(op: AccessOp) -> bool:
        return isinstance(op, (MemberRevoke, ChatRemove, DeviceRemove))

    def apply(self, op: AccessOp, *, created_at: float, pause: Callable[[float], None]) -> None:
        match op:
            case MemberRevoke(chat=chat, user=user):
                self._revoke_passes(lambda: self._unbind_user(chat=chat, user=user), created_at, pause)
            case ChatRemove(chat=chat):
                self._revoke_passes(lambda: self._unbind_chat(chat=chat), created_at, pause)
            case DeviceRemove(username=username, client_id=client_id):
                self._close_connections(username)
                for queue in rabbitmq_session_queues(client_id):
                    self._delete(f"/api/queues/{_q(VHOST)}/{_q(queue)}")
            case _:
                pass  # grants: Django answers the next check from the database

    # --- revocation --------------------------------------------------------------------

    def _revoke_passes(self, revoke: Callable[[], None], created_at: float, pause: Callable[[float], None]) -> None:
        revoke()
        settled = created_at + self.cache_ttl + REVOCATION_MARGIN
        remaining = settled - self.clock()
        if remaining > 0:
            # A SUBSCRIBE may still be allowed from the cache until then: wait it out, and
            # undo what it bound.
            pause(remaining)
            revoke()

    def _unbind_user(self, *, chat: int, user: int) -> None:
        """Unbind the user's session queues from the chat's topics; close the connections
        of the devices that were bound."""
        queues = [item["name"] for item in self._pages(f"/api/queues/{_q(VHOST)}", name=rabbitmq_user_queues_regex(user),
                                                        use_regex="true", columns="name")]
        self._unbind([(queue, key) for queue in queues for key in _routing_keys(chat)])

    def _unbind_chat(self, *, chat: int) -> None:
        """Unbind every queue bound to the chat's topics; close those devices' connections.
        (The management API filters bindings by neither routing key nor page: this lists
        the exchange's bindings; chat removals are rare.)"""
        keys = _routing_keys(chat)
        bindings = self._get(f"/api/exchanges/{_q(VHOST)}/{_q(RABBITMQ_EXCHANGE)}/bindings/source")
        self._unbind(sorted({(b["destination"], b["routing_key"]) for b in bindings
                             if b.get("routing_key") in keys and b.get("destination_type") == "queue"}))

    def _unbind(self, bindings: list[tuple[str, str]]) -> None:
        """Delete each (queue, routing key) binding of a device's session queue."""
        kicked = set()
        for queue, routing_key in bindings:
            client_id = rabbitmq_queue_client_id(queue)
            device = parse_device_client_id(client_id) if client_id else None
            if device is None:
                continue  # not a device's session (the server's own, say): not ours to touch
            # The properties key of a binding without arguments is its routing key.
            path = f"/api/bindings/{_q(VHOST)}/e/{_q(RABBITMQ_EXCHANGE)}/q/{_q(queue)}/{_q(routing_key)}"
            if self._delete(path):
                kicked.add(device[1])
        for device_id in sorted(kicked):
            # Its connection may hold a subscription the broker no longer routes to: the
            # device reconnects, and its client subscribes to what it is a member of.
            self._close_connections(device_username(device_id))

    def _close_connections(self, username: str) -> None:
        # Cluster-wide (a request to one node closes connections on every node).
        self._delete(f"/api/connections/username/{_q(username)}")

    # --- HTTP --------------------------------------------------------------------------

    def _pages(self, path: str, **params: str) -> list[dict]:
        items, page = [], 1
        while True:
            answer = self._get(path, page=str(page), page_size=str(PAGE_SIZE), **params)
            items += answer.get("items", [])
            if page >= answer.get("page_count", 0):
                return items
            page += 1

    def _get(self, path: str, **params: str):
        return self._request("GET", path, params=params).json()

    def _delete(self, path: str) -> bool:
        """True if something was deleted, False if it was not there (404: already so)."""
        return self._request("DELETE", path, missing_ok=True).status_code != 404

    def _request(self, method: str, path: str, *, params: dict | None = None,
                 missing_ok: bool = False) -> requests.Response:
        failure = None
        for i, url in enumerate(list(self.urls)):
            try:
                response = self.http.request(method, url + path, params=params, timeout=self.timeout)
            except requests.RequestException as exc:
                failure = f"{url}: {type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                failure = f"{url}: {response.status_code} {response.text[:200]}"
                continue
            if i:
                logger.info("management API: %s answers; %s did not (%s)", url, self.urls[0], failure)
                self.urls = self.urls[i:] + self.urls[:i]
            if response.ok or (missing_ok and response.status_code == 404):
                return response
            raise AccessRefused(f"{method} {path}: {response.status_code} {response.text[:200]}")
        raise AccessUnavailable(f"{method} {path}: no management API answered ({failure})")
