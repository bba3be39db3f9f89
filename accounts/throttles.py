"""The accounts app's rate limits (rates in settings.REST_FRAMEWORK, chatserver/throttling.py)."""

from rest_framework.exceptions import Throttled

from accounts.errors import InvalidCredentials
from chatserver import ratelimit
from chatserver.throttling import AddressThrottle, UserThrottle, limit_for


class SignupLoginThrottle(AddressThrottle):
    """Signup and login together, per client address."""

    scope = "auth"


class PasswordCheckThrottle(AddressThrottle):
    """What a password confirms (a password change, an account deletion): in the same
    bucket as signup and login, so a stolen token is no faster a way to guess."""

    scope = "auth"
    methods = frozenset({"POST", "DELETE"})


class FriendRequestThrottle(UserThrottle):
    scope = "friend_request"


class LoginFailures:
    """Failed logins per username: one is counted before the password is checked (so
    concurrent guesses cannot pass the limit together) and given back when it was right.

        with LoginFailures(username):
            services.user_login(...)
    """

    scope = "login_failure"

    def __init__(self, username: str) -> None:
        self.limit = limit_for(self.scope)
        self.key = f"{self.scope}:{username.lower()}"

    def __enter__(self) -> "LoginFailures":
        if self.limit is not None:
            decision = ratelimit.take(self.key, self.limit)
            if not decision.allowed:
                raise Throttled(wait=decision.retry_after)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.limit is not None and not (exc_type and issubclass(exc_type, InvalidCredentials)):
            ratelimit.give_back(self.key, self.limit)
        return False
