"""Avatars: an uploaded picture, checked and re-encoded by the media pipeline.

What the file is comes from its bytes (`chats.media.sniff`: the same checks as an image
message, Pillow must decode it); anything but an image is refused. The server keeps its
own re-encoding, at most 1024 px a side, as WebP, never the uploaded bytes: no metadata
(a phone photo's EXIF carries where it was taken) reaches the people who see the avatar,
and what is served is always a plain image. The thumbnail is the media pipeline's (320
px, WebP).
"""

import io
import uuid

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from chats import media
from chatserver.errors import InvalidInput

FULL_SIZE = (1024, 1024)
MIME = "image/webp"
# The largest picture accepted (bytes): a phone photo, not a video.
MAX_SIZE = 5 * 1024 * 1024


def prepare(upload) -> tuple[bytes, bytes]:
    """(the avatar, its thumbnail) as WebP bytes; 400 on `file` if it is not an image."""
    sniffed = media.sniff(upload)
    if sniffed.type != "image" or sniffed.thumbnail is None:
        raise InvalidInput("file", "Not an image (JPEG, PNG, GIF or WebP).")
    upload.seek(0)
    with Image.open(upload) as image:
        image.seek(0)  # first frame of an animation
        copy = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    copy.thumbnail(FULL_SIZE)
    out = io.BytesIO()
    copy.save(out, format="WEBP", quality=85)
    return out.getvalue(), sniffed.thumbnail


def store(*, user_id: int, full: bytes, thumbnail: bytes) -> tuple[str, str]:
    """Save both under names no client chooses; return their storage names."""
    key = uuid.uuid4().hex
    return (
        default_storage.save(f"avatars/{user_id}/{key}", ContentFile(full)),
        default_storage.save(f"avatars/{user_id}/{key}.thumb", ContentFile(thumbnail)),
    )


def discard(*names: str) -> None:
    media.discard(*names)
