from django.db.models.functions import Lower

from accounts.models import User
from chatserver.errors import NotFound


class UserNotFound(NotFound):
    code = "user_not_found"
    message = "User not found."


def user_get_by_username(*, username: str) -> User | None:
    """The user with this name, ignoring case (served by the case-insensitive index)."""
    return User.objects.alias(lname=Lower("username")).filter(lname=username.lower()).first()


def user_get(*, user_id: int) -> User:
    user = User.objects.filter(id=user_id, is_active=True).first()
    if user is None:
        raise UserNotFound()
    return user
