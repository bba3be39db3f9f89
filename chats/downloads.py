"""Serving attachments: to members with their token, or to anyone holding a short-lived
signed link (for image loaders and players that cannot send headers).

Every answer is a download that cannot run as a page: the type is the one sniffed at
upload (media) or `application/octet-stream` (everything else, as an attachment),
`X-Content-Type-Options: nosniff`, and a CSP that allows nothing.
"""

from django.conf import settings
from django.core import signing
from django.http import FileResponse
from django.utils.http import content_disposition_header

from chats.media import DOWNLOAD_ONLY
from chats.models import Attachment
from chats.errors import AttachmentNotFound, LinkExpired
from chatserver.files import stored_file_response

_SALT = "chats.attachment-link"




def link_token(*, attachment: Attachment, thumbnail: bool) -> str:
    return signing.dumps({"a": attachment.id, "t": int(thumbnail)}, salt=_SALT, compress=False)


def attachment_from_token(token: str) -> tuple[Attachment, bool]:
    try:
        value = signing.loads(token, salt=_SALT, max_age=settings.ATTACHMENT_LINK_TTL)
    except signing.SignatureExpired:
        raise LinkExpired() from None
    except signing.BadSignature:
        raise AttachmentNotFound() from None
    attachment = Attachment.objects.select_related("message").filter(id=value["a"]).first()
    if attachment is None:
        raise AttachmentNotFound()
    return attachment, bool(value["t"])


def serve(attachment: Attachment, *, thumbnail: bool = False) -> FileResponse:
    mime = "image/webp" if thumbnail else attachment.mime
    response = stored_file_response(attachment.thumbnail if thumbnail else attachment.file,
                                    content_type=mime, missing=AttachmentNotFound, max_age=300)
    response["Content-Disposition"] = content_disposition_header(mime == DOWNLOAD_ONLY, attachment.name)
    return response
