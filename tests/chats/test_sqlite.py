"""SQLite, the zero-setup default, stays a serving target for sends: the service tier
(tests/*/services/: the send, the versioning walk, what every service queues) runs again
on SQLite, where `message_send` writes through `send_sql.SEQ_BUMP` and the ORM instead of
PostgreSQL's one statement.

pytest-django's database is PostgreSQL for the whole session, so that run is a child
pytest with `TEST_DATABASE=sqlite` (tests/support/postgres.py); it takes a few seconds.
"""

import os
import subprocess
import sys

from tests.support.stack import ROOT

SERVICE_TIER = ["tests/chats/services", "tests/accounts/services"]


def test_the_service_tier_passes_on_sqlite(tmp_path):
    # given
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PYTEST_ADDOPTS"}}
    env.update(TEST_DATABASE="sqlite", DATA_DIR=str(tmp_path), ENV_FILE="")

    # when
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SERVICE_TIER,
         "-o", "addopts=", "-W", "error::RuntimeWarning"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )

    # then
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "failed" not in child.stdout
