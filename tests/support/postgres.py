"""A throw-away PostgreSQL cluster for the suite, and pytest-django pointed at it.

Fixtures (all session-scoped):

- `postgres`: a started `PostgresCluster`, stopped and deleted at the end of the session.
- `django_db_modify_db_settings`: pytest-django's hook, overridden so that the test
  database (`test_chat`) is created in that cluster, whatever DATABASE_URL says; unless
  `TEST_DATABASE=sqlite`, which leaves the settings' SQLite default (an in-memory test
  database; tests/chats/test_sqlite.py runs the service tier that way).
- `test_database_url`: `postgres://...` of that test database, for the processes a test
  starts (granian, the relay) as their DATABASE_URL.

The server binaries come from Debian's packages (`make test` installs them): a missing
binary is an error, never a skip. They refuse to run as root, so as root they run as the
`postgres` user the package creates.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_LIB = Path("/usr/lib/postgresql")


def find_bindir() -> Path:
    """The bin directory of the newest PostgreSQL server installed the Debian way."""
    found = []
    for initdb in PG_LIB.glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        try:
            found.append((tuple(int(part) for part in version.split(".")), initdb.parent))
        except ValueError:
            continue
    if not found:
        raise RuntimeError(
            f"No PostgreSQL server found ({PG_LIB}/<version>/bin/initdb is missing). "
            "`make test` installs it; or run `apt-get install postgresql` as root."
        )
    return max(found)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def sql(database_url: str, query: str, params: tuple | list = ()) -> list[tuple]:
    """Run one statement in that database (autocommit); its rows, if any."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


class PostgresCluster:
    """A cluster in a temporary directory, on a free port of 127.0.0.1, trusting all.

    Tuned for tests, not durability (fsync and friends off). `start()` returns once a
    real connection succeeds; `stop()` kills it at once and deletes the directory.
    """

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port: int | None = None
        self.base: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "Running as root, but there is no `postgres` user to run initdb and "
                    "pg_ctl as (Debian's postgresql package creates it)."
                ) from None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    def url(self, dbname: str) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        try:
            self._make_base()
            self._run("initdb", "-D", self.datadir, "-A", "trust", "-U", self.user,
                      "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
            # The port is free when picked but could be taken before the server binds it.
            for attempt in range(5):
                self.port = free_port()
                try:
                    self._run("pg_ctl", "start", "-w", "-t", str(int(timeout)),
                              "-D", self.datadir, "-l", self.logfile, "-o", self._options())
                    break
                except RuntimeError:
                    if attempt == 4 or "already in use" not in self.log_tail():
                        raise
            self._wait_for_connection(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (immediately: the data is thrown away) and delete the dir."""
        if self.base is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", self.datadir)
            except RuntimeError:
                self._kill_postmaster()
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: clients are cut off, committed data is kept)
        but keep the cluster, for `start_server` to bring it back on the same port."""
        self._run("pg_ctl", "stop", "-m", "fast", "-w", "-D", self.datadir)

    def start_server(self, timeout: float = 60.0) -> None:
        """Start a stopped cluster again (same data, same port); return once it answers."""
        self._run("pg_ctl", "start", "-w", "-t", str(int(timeout)),
                  "-D", self.datadir, "-l", self.logfile, "-o", self._options())
        self._wait_for_connection(timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------

    def _make_base(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        # As root the server runs as `postgres`, which must reach the directory: a
        # private TMPDIR (say under /root) would not do, /tmp does.
        if self._run_as and not _traversable_by_others(base.parent):
            base.rmdir()
            base = Path(tempfile.mkdtemp(prefix="chat-pg-", dir="/tmp"))
        self.base = base
        if self._run_as:
            os.chown(base, self._run_as.pw_uid, self._run_as.pw_gid)

    def _options(self) -> str:
        # pg_ctl hands this string to a shell: quote the one path in it.
        return " ".join([
            f"-p {self.port}",
            f"-k {shlex.quote(str(self.base))}",  # its own socket dir, not /run/postgresql
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            "-c max_connections=200",
        ])

    def _run(self, program: str, *args: object) -> None:
        cmd = [str(self.bindir / program), *map(str, args)]
        as_user = {}
        if self._run_as:
            as_user = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid,
                       "extra_groups": []}
        # cwd and HOME: somewhere the postgres user may enter. Output is small and pg_ctl
        # sends the server's own output to the log file, so capturing cannot block.
        result = subprocess.run(
            cmd, cwd=self.base, env={**os.environ, "HOME": str(self.base)},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, **as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- {self.logfile} ---\n{self.log_tail()}"
            )

    def _wait_for_connection(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(host=self.host, port=self.port, user=self.user,
                                dbname="postgres", connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} accepts no connection after "
                        f"{timeout} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A running throw-away cluster for the whole session."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def django_db_modify_db_settings(request: pytest.FixtureRequest) -> None:
    """Point Django's default database at the cluster (pytest-django's hook)."""
    from django.conf import settings
    from django.db import connections

    if os.environ.get("TEST_DATABASE") == "sqlite":
        if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
            raise RuntimeError("TEST_DATABASE=sqlite needs the SQLite default: unset DATABASE_URL")
        request.getfixturevalue("django_db_modify_db_settings_parallel_suffix")
        return
    postgres: PostgresCluster = request.getfixturevalue("postgres")
    # In place: django.db.connections holds this very dict.
    db = settings.DATABASES["default"]
    db.update(
        ENGINE="django.db.backends.postgresql",
        NAME="chat",
        USER=postgres.user,
        PASSWORD="",
        HOST=postgres.host,
        PORT=str(postgres.port),
        OPTIONS={},
        CONN_MAX_AGE=0,
        CONN_HEALTH_CHECKS=False,
    )
    db["TEST"] = {**db.get("TEST", {}), "NAME": "test_chat"}
    # A connection opened before now would still be a wrapper for the old engine.
    if any(c.alias == "default" for c in connections.all(initialized_only=True)):
        connections["default"].close()
        del connections["default"]
    # What the original fixture does first; here after TEST NAME is set, so that
    # pytest-xdist workers get test_chat_gw0, test_chat_gw1...
    request.getfixturevalue("django_db_modify_db_settings_parallel_suffix")


@pytest.fixture(scope="session")
def test_database_url(django_db_setup: None, postgres: PostgresCluster) -> str:
    """DATABASE_URL of the test database pytest-django created, for subprocesses."""
    from django.db import connections

    settings_dict = connections["default"].settings_dict
    if settings_dict["NAME"] != settings_dict["TEST"]["NAME"]:
        raise RuntimeError(
            "No test database was created in this session: "
            "mark the test that uses test_database_url with django_db."
        )
    return postgres.url(settings_dict["NAME"])
