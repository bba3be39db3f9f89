"""Attachments: what a file is (from its bytes, never from the client's word), and how it
is stored and served.

The client's filename and content type are ignored for everything but the display
name. The type comes from the file's first bytes (`filetype`), checked against an
allow-list per message type; an image must also decode (Pillow) and gets its size and a
thumbnail. Anything else, executables included, is at most a plain `file`, stored and
served as `application/octet-stream` for download, never inline: nothing served can run
as a page in a browser.
"""

import io
import os
import unicodedata
import uuid
from dataclasses import dataclass

import filetype
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Q
from PIL import Image, UnidentifiedImageError

# Sniffed MIME type -> (message type, MIME type served). Served inline only these.
ALLOWED = {
    "image/jpeg": ("image", "image/jpeg"),
    "image/png": ("image", "image/png"),
    "image/gif": ("image", "image/gif"),
    "image/webp": ("image", "image/webp"),
    "audio/mpeg": ("audio", "audio/mpeg"),
    "audio/mp4": ("audio", "audio/mp4"),
    "audio/aac": ("audio", "audio/aac"),
    "audio/ogg": ("audio", "audio/ogg"),
    "audio/x-wav": ("audio", "audio/wav"),
    "audio/x-flac": ("audio", "audio/flac"),
    "audio/amr": ("audio", "audio/amr"),
    "video/mp4": ("video", "video/mp4"),
    "video/x-m4v": ("video", "video/mp4"),
    "video/webm": ("video", "video/webm"),
    "video/3gpp": ("video", "video/3gpp"),
    "video/quicktime": ("video", "video/quicktime"),
    "video/x-matroska": ("video", "video/x-matroska"),
}
DOWNLOAD_ONLY = "application/octet-stream"
THUMBNAIL_SIZE = (320, 320)
# Pillow refuses larger images (decompression bombs); they are kept as plain files.
Image.MAX_IMAGE_PIXELS = 50_000_000


@dataclass
class Sniffed:
    type: str  # message type: image, audio, video or file
    mime: str  # what it is served as
    width: int | None = None
    height: int | None = None
    thumbnail: bytes | None = None


def sniff(upload) -> Sniffed:
    """Classify an uploaded file by its content."""
    upload.seek(0)
    head = upload.read(8192)
    upload.seek(0)
    kind = filetype.guess(head)
    message_type, mime = ALLOWED.get(kind.mime if kind else "", ("file", DOWNLOAD_ONLY))
    if message_type != "image":
        return Sniffed(message_type, mime)
    try:
        with Image.open(upload) as image:
            image.verify()  # the whole structure, not just the header
        upload.seek(0)
        with Image.open(upload) as image:
            width, height = image.size
            thumb = _thumbnail(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return Sniffed("file", DOWNLOAD_ONLY)
    finally:
        upload.seek(0)
    return Sniffed("image", mime, width, height, thumb)


def _thumbnail(image: Image.Image) -> bytes:
    image.seek(0)  # first frame of an animation
    copy = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    copy.thumbnail(THUMBNAIL_SIZE)
    out = io.BytesIO()
    copy.save(out, format="WEBP", quality=80)
    return out.getvalue()


def display_name(filename: str | None) -> str:
    """The client's file name, only for showing and for Content-Disposition: no path,
    no control characters, at most 200 characters."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = "".join(c for c in unicodedata.normalize("NFC", name) if unicodedata.category(c)[0] != "C")
    return name.strip()[:200] or "file"


def store(*, chat_id: int, upload, sniffed: Sniffed) -> tuple[str, str]:
    """Save the file (and its thumbnail) under names no client chooses; return the
    storage names (thumbnail "" if none)."""
    key = uuid.uuid4().hex
    name = default_storage.save(f"attachments/{chat_id}/{key}", upload)
    thumb = ""
    if sniffed.thumbnail is not None:
        thumb = default_storage.save(f"attachments/{chat_id}/{key}.thumb", ContentFile(sniffed.thumbnail))
    return name, thumb


def discard(*names: str) -> None:
    """Delete stored files; a missing one is not an error."""
    for name in names:
        if name:
            default_storage.delete(name)


def discard_unreferenced(*names: str) -> None:
    """Delete the stored files that no attachment refers to any more. A forward's
    attachment shares its original's files (no copy of the bytes), so deleting a message
    (or a chat) keeps what another message still shows. Called once the deletion is
    committed: a forward that was being written then has committed too (it locks its
    original's row, which the deletion writes), and is seen here."""
    from chats.models import Attachment

    names = {name for name in names if name}
    if not names:
        return
    used = set()
    for file, thumbnail in Attachment.objects.filter(Q(file__in=names) | Q(thumbnail__in=names)).values_list(
        "file", "thumbnail"
    ):
        used.update((file, thumbnail))
    discard(*sorted(names - used))
