"""A stand-in for Firebase Cloud Messaging: its HTTP v1 send endpoint and an OAuth2 token
endpoint, on one local port, so QA can watch pushes reach a sleeping phone without Google.

    chat-sim fcm-sink --port 9099

Point the server at it: a service-account JSON whose `token_uri` is
`http://127.0.0.1:9099/token` (`chat-sim fcm-sink --write-service-account FILE` writes one,
with a fresh key), `FCM_ENDPOINT=http://127.0.0.1:9099`, any `FCM_PROJECT_ID`. Each push
is printed as it arrives, and remembered by registration token so that `chat-sim listen
--background` can show what a phone got while it was away (`GET /pushes?token=...`);
`GET /log?after=N` lists every push from the Nth on with its arrival time (`chat-sim load
--push-sink` measures push latency with it).

What it checks, as FCM does: the bearer token is one it issued; the URL names a project;
the body is `{"message": {"token", "data"?, "android"?}}` with string data values; the
message is at most 4,096 bytes. The suite drives it from Python (`FcmSink`), with
`respond` deciding the answer of each send (errors, Retry-After, hangs).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
MAX_MESSAGE_BYTES = 4096


@dataclass
class Push:
    """One send request as the sink received it."""

    project: str
    message: dict
    headers: dict[str, str]
    received_at: float = field(default_factory=time.time)

    @property
    def token(self) -> str:
        return self.message.get("token", "")

    @property
    def data(self) -> dict:
        return self.message.get("data", {})

    @property
    def android(self) -> dict:
        return self.message.get("android", {})


@dataclass
class Answer:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow or hung FCM)


def fcm_error(status: int, status_name: str, error_code: str | None = None, message: str = "") -> dict:
    """An error body the way FCM HTTP v1 shapes it."""
    error: dict = {"code": status, "message": message or status_name, "status": status_name}
    if error_code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
        ]
    return {"error": error}


def _jwt_claims(assertion: str) -> dict:
    try:
        payload = assertion.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


class FcmSink:
    """The stand-in server. `respond(push)` may return an Answer; None means success."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 respond: Callable[[Push], Answer | None] | None = None,
                 on_push: Callable[[Push], None] | None = None) -> None:
        self.respond = respond
        self.on_push = on_push
        # Every well-formed send (`attempts`), and those answered with success (`pushes`).
        self.attempts: list[Push] = []
        self.pushes: list[Push] = []
        self.token_requests: list[dict] = []
        self.issued: set[str] = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FcmSink:
        self._thread = threading.Thread(target=self.server.serve_forever, name="fcm-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FcmSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Push]:
        """The first `count` pushes received (fewer if they do not come in time)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.pushes) < count and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            return list(self.pushes[:count])

    def service_account(self, *, private_key_pem: str, client_email: str = "chat@example.iam") -> dict:
        """A service-account JSON for this sink (its token endpoint), with the given key."""
        return {
            "type": "service_account",
            "project_id": "chat-sim",
            "private_key_id": secrets.token_hex(8),
            "private_key": private_key_pem,
            "client_email": client_email,
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }

    # --- HTTP ---------------------------------------------------------------------------

    def _record(self, push: Push) -> None:
        with self._cond:
            self.pushes.append(push)
            self._cond.notify_all()
        if self.on_push is not None:
            self.on_push(push)

    def _handler(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet: pushes are printed by on_push
                pass

            def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/log":
                    # Every push from number `after` on, with when it arrived (load tests
                    # measure push latency with it): {"pushes": [...], "next": N}.
                    try:
                        after = max(0, int(parse_qs(url.query).get("after", ["0"])[0]))
                    except ValueError:
                        return self._answer(400, fcm_error(400, "INVALID_ARGUMENT", message="after: a number"))
                    with sink._lock:
                        found = [{"received_at": p.received_at, "message": p.message} for p in sink.pushes[after:]]
                    return self._answer(200, {"pushes": found, "next": after + len(found)})
                if url.path != "/pushes":
                    return self._answer(404, fcm_error(404, "NOT_FOUND"))
                token = parse_qs(url.query).get("token", [""])[0]
                with sink._lock:
                    found = [p.message for p in sink.pushes if p.token == token]
                self._answer(200, {"pushes": found})

            def do_POST(self):
                raw = self._body()
                if self.path == "/token":
                    form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                    claims = _jwt_claims(form.get("assertion", ""))
                    with sink._lock:
                        sink.token_requests.append({"form": form, "claims": claims})
                    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not claims:
                        return self._answer(400, {"error": "invalid_grant"})
                    token = "ya29.sink-" + secrets.token_urlsafe(16)
                    with sink._lock:
                        sink.issued.add(token)
                    return self._answer(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})
                match = _SEND_PATH.match(self.path)
                if match is None:
                    return self._answer(404, fcm_error(404, "NOT_FOUND", message="No such method."))
                bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
                with sink._lock:
                    known = bearer in sink.issued
                if not known:
                    return self._answer(401, fcm_error(401, "UNAUTHENTICATED"))
                try:
                    message = json.loads(raw)["message"]
                    data = message.get("data", {})
                    valid = (
                        isinstance(message.get("token"), str)
                        and isinstance(data, dict)
                        and all(isinstance(v, str) for v in data.values())
                    )
                except (ValueError, KeyError, TypeError, AttributeError):
                    valid = False
                if not valid:
                    return self._answer(400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Bad message."))
                if len(json.dumps(message).encode()) > MAX_MESSAGE_BYTES:
                    return self._answer(400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Too big."))
                push = Push(project=match.group(1), message=message, headers=dict(self.headers.items()))
                with sink._lock:
                    sink.attempts.append(push)
                answer = sink.respond(push) if sink.respond is not None else None
                if answer is not None and answer.delay:
                    time.sleep(answer.delay)
                if answer is not None and answer.status != 200:
                    return self._answer(answer.status, answer.body, answer.headers)
                sink._record(push)
                name = f"projects/{push.project}/messages/{secrets.token_hex(8)}"
                self._answer(200, {"name": name})

        return Handler
