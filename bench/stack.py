"""A fresh, throw-away stack for benchmarks: PostgreSQL, Mosquitto, migrations, gunicorn
and the workers (relay, presence, push), built from the test suite's own process helpers (tests/support).

    with BenchStack() as stack:
        stack.url            # http://127.0.0.1:<port>
        stack.describe()     # what runs, for the results file

Everything lives in one temporary directory, removed on exit (kept, with its logs, when
starting failed). Like the test stacks it uses a fast password hasher and rate limits
that the load never reaches (but counted, as shipped); PostgreSQL runs with fsync and
synchronous_commit off (see tests/support/postgres.py), so figures are those of the
application, not of a disk.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WEB_WORKERS = 2
WEB_THREADS = 4


class BenchStack:
    def __init__(self, *, push_sink=None) -> None:
        """`push_sink`: a chat_sim FcmSink to push to (push is off without one)."""
        self.push_sink = push_sink
        self.workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.pg = None
        self.broker = None
        self.processes = []
        self.url = ""

    def __enter__(self) -> BenchStack:
        try:
            self.start()
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop(keep=exc[0] is not None)

    def start(self) -> None:
        # Settings are read at import: point them at this stack before anything imports
        # them, so that no secret is generated under the repository's var/.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatserver.settings")
        os.environ["DATA_DIR"] = str(self.workdir)
        os.environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
        os.environ["MQTT_ADMIN_PASSWORD"] = secrets.token_urlsafe(24)
        import psycopg

        from tests.support.mosquitto import MosquittoBroker, make_workdir
        from tests.support.postgres import PostgresCluster
        from tests.support.stack import HttpServer, ServerProcess, server_env

        self.pg = PostgresCluster().start()
        with psycopg.connect(self.pg.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE chat")
        self.broker = MosquittoBroker(make_workdir("chat-bench-mqtt-"))
        self.broker.start()
        env = server_env(database_url=self.pg.url("chat"), broker=self.broker, data_dir=self.workdir)
        # The shipped settings, not the suite's (which check every event against its
        # schema); only the hasher is the test suite's, to sign up thousands of phones.
        # The rate limits run as shipped (the buckets in the database, one upsert per
        # POST: that cost is measured) with rates no load step reaches: signups come
        # from one address, and a load user sends more than a person
        # (tests.support.stack.server_env sets them).
        env.update(
            DJANGO_SETTINGS_MODULE="chatserver.settings",
            PASSWORD_HASHERS="django.contrib.auth.hashers.MD5PasswordHasher",
        )
        if self.push_sink is not None:
            env.update(self._push_env())
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                                 capture_output=True, text=True)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
        for worker in ("relay", "presence", "push"):
            process = ServerProcess(worker, [sys.executable, "manage.py", "worker", worker], env, self.workdir)
            self.processes.append(process.start())
        web = HttpServer(env, self.workdir, workers=WEB_WORKERS)
        self.processes.append(web)
        web.start()
        self.url = web.url
        self._wait_healthy(timeout=30)

    def _push_env(self) -> dict[str, str]:
        """Push on, to the sink: a service account of its own (a fresh key) for its token endpoint."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        account = self.workdir / "fcm-service-account.json"
        account.write_text(json.dumps(self.push_sink.service_account(private_key_pem=key)))
        return {"FCM_PROJECT_ID": "bench", "FCM_SERVICE_ACCOUNT_FILE": str(account),
                "FCM_ENDPOINT": self.push_sink.url}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each part of the stack, its child
        processes included (gunicorn's workers, PostgreSQL's backends, exited ones too)."""
        roots = {p.name: p.proc.pid for p in self.processes if p.proc is not None}
        roots["broker"] = self.broker.process.pid
        try:
            roots["postgres"] = int((self.pg.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        return {name: tree_cpu(pid) for name, pid in roots.items()}

    def pause(self, name: str) -> None:
        """SIGSTOP one of the stack's processes (the presence worker, for a control run)."""
        self._process(name).proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self._process(name).proc.send_signal(signal.SIGCONT)

    def _process(self, name: str):
        return next(p for p in self.processes if getattr(p, "name", None) == name)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        body = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health/", timeout=2) as response:
                    body = json.loads(response.read())
            except (urllib.error.HTTPError, OSError, ValueError):
                body = {}
            if body.get("relay") == "running" and body.get("broker") == "up":
                return
            time.sleep(0.1)
        raise RuntimeError(f"the stack is not healthy after {timeout}s: {body}")

    def describe(self) -> dict:
        return {
            "database": f"PostgreSQL ({self.pg.bindir.parent.name}, fsync off)",
            "web": f"gunicorn gthread {WEB_WORKERS} workers x {WEB_THREADS} threads",
            "broker": "mosquitto (project config)",
            "relay": "1 process",
            "presence": "1 process",
            "push": f"1 process, {'to a local FCM stand-in' if self.push_sink is not None else 'off'}",
            "hasher": "MD5 (throw-away stack)",
            "rate limits": "on, buckets in the database (rates above the load)",
        }

    def stop(self, *, keep: bool = False) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.broker is not None:
            self.broker.stop()
            if not keep:
                shutil.rmtree(self.broker.workdir, ignore_errors=True)
        if self.pg is not None:
            self.pg.stop()
        if keep:
            print(f"bench stack directory kept: {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def tree_cpu(root: int) -> float:
    """Seconds of CPU of process `root` and all its descendants, live or reaped."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
        stats[int(entry)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo += children.get(pid, [])
    return total


if __name__ == "__main__":
    # `python bench/stack.py`: just run a fresh stack until Ctrl-C or SIGTERM (by hand).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with BenchStack() as stack:
        print(f"stack up: {stack.url} (logs in {stack.workdir}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
