"""Sending on SQLite, the zero-setup default, where `message_send` writes through the ORM
(on PostgreSQL, which the rest of the suite uses, it writes in one statement).

pytest-django's database is PostgreSQL for the whole session, so the scenario runs in a
child process with a SQLite file of its own (tests/support/sqlite_send.py, about a
second) and these tests assert on what it reports.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.support.stack import ROOT


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DATA_DIR=str(tmp_path_factory.mktemp("sqlite")),
        DJANGO_SETTINGS_MODULE="tests.settings",
        ENV_FILE="",
    )
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.sqlite_send"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


def test_a_message_gets_its_seq_pointers_and_one_event_for_the_members(seen):
    ids = seen["ids"]
    status, sent = seen["sent"]

    assert seen["vendor"] == "sqlite"
    assert status == 201
    assert (sent["seq"], sent["author"], sent["content"], sent["client_id"]) == (1, ids["alice"], "hi", "k")
    assert sent["unread_count"] == 2
    assert seen["alice_pointers"] == [1, sent["id"], 1, sent["id"]]
    first = seen["events"][0]
    assert first["payload"]["data"] == sent
    assert first["payload"]["version"] == sent["version"]
    assert first["user_ids"] == sorted([ids["alice"], ids["bob"], ids["carol"]])
    assert first["chat_id"] == ids["chat"]


def test_a_retry_returns_the_first_message_and_writes_nothing(seen):
    assert seen["retried"] == [200, seen["sent"][1]]
    assert len(seen["events"]) == 2  # the first message and the reply
    assert seen["last_seq"] == 2


def test_a_reply_carries_its_preview(seen):
    status, reply = seen["reply"]
    sent = seen["sent"][1]

    assert status == 201
    assert reply["seq"] == 2
    assert reply["reply_to"] == sent["id"]
    assert reply["reply_preview"] == {"id": sent["id"], "author": sent["author"], "content": "hi", "deleted": False}
    assert seen["events"][1]["payload"]["data"] == reply


def test_refusals_have_the_same_codes(seen):
    assert [seen[k][0] for k in ("restricted", "outsider", "blocked")] == [403, 404, 403]
    assert [seen[k][1]["error"]["code"] for k in ("restricted", "outsider", "blocked")] == [
        "cannot_post", "chat_not_found", "blocked",
    ]
