"""Link preview jobs, queued in the transaction of the send or the edit (the `previews`
worker, chats/workers.py, does the fetching; `message_edit.message_preview_set` stores
what it found)."""

from django.conf import settings

from chats.models import Message, PreviewJob
from chats.previews import first_link


def preview_queue(message: Message) -> PreviewJob | None:
    """Queue a preview of the message's first http(s) link, if it has one (none with
    LINK_PREVIEWS off). Content without "http" costs nothing but a substring check."""
    if not settings.LINK_PREVIEWS or "http" not in message.content.lower():
        return None
    url = first_link(message.content)
    if url is None:
        return None
    return PreviewJob.objects.create(message_id=message.id, url=url)


def preview_requeue(message: Message) -> None:
    """After an edit: a preview of another link than the new first one goes (the
    `message.updated` of the edit says so), and the new link is queued, unless it is the
    one already previewed."""
    url = first_link(message.content) if "http" in message.content.lower() else None
    current = (message.link_preview or {}).get("url")
    if current is not None and current != url:
        message.link_preview = None
    if url is not None and url != current:
        preview_queue(message)
