"""The API shapes of users (also carried by account events): pure functions from rows to
JSON-able dicts."""

from accounts.models import User


def user_data(user: User) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "presence": user.presence,
        "last_seen": user.last_seen,
    }
