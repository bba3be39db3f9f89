"""Firebase Cloud Messaging, HTTP v1: one message to one registration token.

Through google-auth (Google's own, maintained OAuth2 library) for the service account's
access token, and `requests` for the call: the send is one documented POST, so the SDKs
(firebase-admin, pyfcm) would add a large dependency or a thin wrapper for nothing;
google-auth does the part worth not writing (signing the JWT grant, caching and
refreshing the token), and honours the `token_uri` of the service-account file, which
lets tests and air-gapped sites use their own token endpoint.

`FcmClient.send` never raises for FCM's answers: it classifies them (`Outcome`), so the
push worker decides what to do with each device (drop its token, retry later, give up).
It is safe to call from several threads at once.

google-auth and requests are imported by `FcmClient` only, when the push worker builds
one (push on): every process imports this module (for `FcmMessage`), and the two cost
about 29 MiB of resident memory (measured: a fresh interpreter importing
`google.auth.transport.requests`), which the relay, presence and the web workers never use.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests
    from google.oauth2 import service_account

logger = logging.getLogger("chatserver.fcm")

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# FCM refuses messages over 4,096 bytes (payload).
MAX_MESSAGE_BYTES = 4096


class Outcome(StrEnum):
    SENT = "sent"
    # The token will never work again (app uninstalled, token rotated, not ours).
    DROP_TOKEN = "drop_token"
    # Worth trying again later: quota, FCM unavailable, a timeout, our own token refused.
    RETRY = "retry"
    # Will not work by being sent again, and says nothing about the token.
    FAILED = "failed"


@dataclass(frozen=True)
class FcmMessage:
    """A data-only message: the app builds the notification itself. FCM data values are
    strings."""

    token: str
    data: dict[str, str]
    priority: str = "high"  # "high" wakes a dozing phone; "normal" waits for its window
    collapse_key: str | None = None
    ttl_seconds: int = 2419200

    def body(self) -> dict:
        android: dict = {"priority": self.priority, "ttl": f"{self.ttl_seconds}s"}
        if self.collapse_key:
            android["collapse_key"] = self.collapse_key
        return {"message": {"token": self.token, "data": self.data, "android": android}}


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: int | None = None
    error: str = ""
    # Seconds FCM asked us to wait (Retry-After), if it did.
    retry_after: float | None = None


@dataclass
class FcmClient:
    project_id: str
    service_account_file: str
    endpoint: str = "https://fcm.googleapis.com"
    timeout: float = 10.0
    _credentials: service_account.Credentials = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _local: threading.local = field(init=False, repr=False, default_factory=threading.local)

    def __post_init__(self) -> None:
        from google.oauth2 import service_account

        self._credentials = service_account.Credentials.from_service_account_file(
            self.service_account_file, scopes=[SCOPE]
        )
        self.url = f"{self.endpoint.rstrip('/')}/v1/projects/{self.project_id}/messages:send"

    def _session(self) -> requests.Session:
        # One keep-alive session per thread (requests.Session is not thread-safe).
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session

    def _bearer(self) -> str:
        from google.auth.transport.requests import Request as AuthRequest

        with self._lock:
            if not self._credentials.valid:
                self._credentials.refresh(AuthRequest(self._session()))
            return f"Bearer {self._credentials.token}"

    def _forget_token(self) -> None:
        with self._lock:
            self._credentials.token = None

    def send(self, message: FcmMessage) -> Result:
        import google.auth.exceptions
        import requests

        try:
            bearer = self._bearer()
        except (google.auth.exceptions.GoogleAuthError, requests.RequestException) as exc:
            return Result(Outcome.RETRY, error=f"access token: {exc}")
        try:
            response = self._session().post(
                self.url, json=message.body(), headers={"Authorization": bearer}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            return Result(Outcome.RETRY, error=f"{type(exc).__name__}: {exc}")
        return self._classify(response)

    def _classify(self, response: requests.Response) -> Result:
        status = response.status_code
        if status == 200:
            return Result(Outcome.SENT, status=status)
        status_name, error_code, text = _error_fields(response)
        error = f"{status} {error_code or status_name}: {text}".strip()
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if error_code == "UNREGISTERED" or status == 404:
            return Result(Outcome.DROP_TOKEN, status, error)
        if error_code == "INVALID_ARGUMENT" or status_name == "INVALID_ARGUMENT":
            # FCM's answer for a malformed token. (A malformed message of ours would be
            # a bug that fails every push, not one token: the tests hold the shape.)
            return Result(Outcome.DROP_TOKEN, status, error)
        if error_code == "SENDER_ID_MISMATCH":
            return Result(Outcome.DROP_TOKEN, status, error)
        if status == 401:
            # Our access token was refused: get a new one, then try again.
            self._forget_token()
            return Result(Outcome.RETRY, status, error, retry_after)
        if status == 429 or status >= 500:
            return Result(Outcome.RETRY, status, error, retry_after)
        return Result(Outcome.FAILED, status, error)


def _error_fields(response: requests.Response) -> tuple[str, str, str]:
    """(status name, FCM error code, message) of an error answer, as far as it has them."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return "", "", response.text[:200]
    if not isinstance(error, dict):
        return "", "", str(error)[:200]
    code = ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            code = detail["errorCode"]
    return str(error.get("status", "")), code, str(error.get("message", ""))[:200]


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
