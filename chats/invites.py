"""Invitations (the seeds' "game invitation"): a message of type `invite` that carries
`{title, url, expires_at}`, which the other members answer, accept or decline.

The message's `invite` is the broadcast form, the same for every reader:
`{title, url, expires_at, accepted, declined, answers}` with exact counts and the first
`ANSWERS_SHOWN` answers `{user, answer, at}` in the order given (a changed answer moves
to the end). The `InviteAnswer` rows are the truth; the summary is rebuilt from them
under the chat's lock on every change (`chats.services.invites`), so reading messages
costs no query for it.
"""

from datetime import UTC, datetime

from rest_framework.utils.encoders import JSONEncoder

from chats.models import InviteAnswer

ANSWERS_SHOWN = 100

_encoder = JSONEncoder()


def _time(value: datetime | None) -> str | None:
    """A time as the API writes it (UTC, `Z`), for the JSON column."""
    return None if value is None else _encoder.default(value.astimezone(UTC))


def invite_new(*, title: str, url: str | None = None, expires_at: datetime | None = None) -> dict:
    """The `invite` of a new invitation: no answers yet."""
    return invite_summary({"title": title, "url": url or None, "expires_at": _time(expires_at)}, answers=[])


def invite_summary(invite: dict, *, answers: list[tuple[int, str, datetime]]) -> dict:
    """`invite`'s title, url and expiry with these answers `(user, answer, at)`, in order."""
    return {
        "title": invite["title"],
        "url": invite["url"],
        "expires_at": invite["expires_at"],
        "accepted": sum(1 for _, answer, _ in answers if answer == InviteAnswer.Answer.ACCEPT),
        "declined": sum(1 for _, answer, _ in answers if answer == InviteAnswer.Answer.DECLINE),
        "answers": [{"user": user, "answer": answer, "at": _time(at)} for user, answer, at in answers[:ANSWERS_SHOWN]],
    }


def invite_expired(invite: dict, *, now: datetime) -> bool:
    expires = invite.get("expires_at")
    return expires is not None and datetime.fromisoformat(expires.replace("Z", "+00:00")) <= now
