"""The errors of accounts, devices, friends and blocks, with their codes."""

from enum import StrEnum, unique

from chatserver.errors import ApplicationError, Conflict, ErrorCode, NotFound, PermissionDenied


@unique
class AccountsErrorCode(StrEnum):
    USERNAME_TAKEN = "username_taken"
    INVALID_CREDENTIALS = "invalid_credentials"
    USER_NOT_FOUND = "user_not_found"
    BLOCKED = "blocked"
    INVALID_TARGET = "invalid_target"
    WRONG_PASSWORD = "wrong_password"
    DEVICE_NOT_FOUND = "device_not_found"
    AVATAR_NOT_FOUND = "avatar_not_found"


class UsernameTaken(Conflict):
    code = AccountsErrorCode.USERNAME_TAKEN
    message = "This username is taken."

    def __init__(self) -> None:
        super().__init__(fields={"username": [self.message]})


class InvalidCredentials(ApplicationError):
    status_code = 401
    code = AccountsErrorCode.INVALID_CREDENTIALS
    message = "Wrong username or password."


class TokenRevoked(ApplicationError):
    """The request's device was signed out (or its user deactivated) after its token was
    taken from a process's token cache; found by the write that re-checks it. The same
    401 `invalid_token` as the token check's (the view adds `WWW-Authenticate`)."""

    status_code = 401
    code = ErrorCode.INVALID_TOKEN
    message = "Invalid or revoked token."


class UserNotFound(NotFound):
    code = AccountsErrorCode.USER_NOT_FOUND
    message = "User not found."


class BlockedError(PermissionDenied):
    """Either user has blocked the other: the same answer both ways, so it does not tell
    who blocked whom."""

    code = AccountsErrorCode.BLOCKED
    message = "You cannot do this with this user."


class NothingToRemove(NotFound):
    message = "No friendship or request with this user."


class NotBlocked(NotFound):
    message = "This user is not blocked."


class SelfTarget(ApplicationError):
    code = AccountsErrorCode.INVALID_TARGET
    message = "You cannot do this with yourself."


class WrongPassword(PermissionDenied):
    """The password that confirms a change of one's own account (not a login: the token
    stays valid, so not a 401)."""

    code = AccountsErrorCode.WRONG_PASSWORD
    message = "The password is wrong."

    def __init__(self, field: str) -> None:
        super().__init__(fields={field: [self.message]})


class DeviceNotFound(NotFound):
    code = AccountsErrorCode.DEVICE_NOT_FOUND
    message = "Device not found."


class AvatarNotFound(NotFound):
    code = AccountsErrorCode.AVATAR_NOT_FOUND
    message = "This user has no avatar."
