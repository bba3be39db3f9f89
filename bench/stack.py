"""A fresh, throw-away stack for benchmarks: PostgreSQL, the broker, migrations, granian
and the workers (relay, presence, push), built from the test suite's own process helpers (tests/support).

    with BenchStack() as stack:             # the shipped configuration (Mosquitto)
        stack.url                           # http://127.0.0.1:<port>
        stack.seed_users(names, password)   # signed-up users and their tokens, quickly
        stack.describe()                    # what runs, for the results file
    with BenchStack(fast_db=True) as stack: # the same on PostgreSQL with fsync off
    with BenchStack(broker="rabbitmq") as stack:                # one RabbitMQ node
    with BenchStack(broker="rabbitmq", cluster=True) as stack:  # three, joined
        stack.stop_node("chat-c")           # one node down (not the relay's)

The broker is Mosquitto (tests/support/mosquitto.py) or RabbitMQ (tests/support/rabbitmq.py:
RabbitNode, or RabbitCluster's three nodes chat-a, chat-b, chat-c on this machine), each
from the project's own config, as `make run` starts it. With RabbitMQ the front (nginx)
also serves the broker-auth listener on loopback, where the node asks Django about every
device login and subscription, as with `make run`; the relay, presence and push workers
connect to the first node (chat-a); the load generator spreads its phones over the
nodes' MQTT ports (bench/run.py).

Everything lives in one temporary directory, removed on exit (kept, with its logs, when
starting failed). By default it is what `make run` ships: PostgreSQL with Debian's stock
durability (fsync, synchronous_commit and full_page_writes on, on this machine's disk),
Django's own password hasher (PBKDF2), nginx and granian started with the Procfile's own
`front:` and `web:` command lines (nginx's access log on), the settings' defaults (presence keepalive included). What
differs from `make run`: rate limits that the load never reaches (but counted, as
shipped: one bucket statement per POST), password authentication to PostgreSQL (`trust`
here: it only costs at connect, and connections persist), and no honcho in between
(each process logs to its own file). `fast_db=True` runs PostgreSQL with fsync,
synchronous_commit and full_page_writes off, for comparison with older figures.
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
BROKERS = ("mosquitto", "rabbitmq")
# The password of every seeded user is hashed once with the shipped hasher (seed_users).
SEED_SCRIPT = Path(__file__).resolve().parent / "seed_users.py"


class BenchStack:
    def __init__(self, *, push_sink=None, fast_db: bool = False, broker: str = "mosquitto",
                 cluster: bool = False) -> None:
        """`push_sink`: a chat_sim FcmSink to push to (push is off without one);
        `fast_db`: PostgreSQL with fsync and synchronous_commit off (not as shipped);
        `broker`: "mosquitto" or "rabbitmq"; `cluster`: three RabbitMQ nodes instead of one."""
        if broker not in BROKERS:
            raise ValueError(f"broker must be one of {', '.join(BROKERS)}, not {broker!r}")
        if cluster and broker != "rabbitmq":
            raise ValueError("a cluster is of RabbitMQ nodes")
        self.push_sink = push_sink
        self.fast_db = fast_db
        self.broker_kind = broker
        self.cluster = cluster
        self.env: dict[str, str] = {}
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

        from tests.support.stack import ServerProcess, server_env

        self.pg = bench_cluster(fast_db=self.fast_db).start()
        with psycopg.connect(self.pg.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE chat")
        self.broker = self._new_broker()
        self.broker.start()
        env = server_env(database_url=self.pg.url("chat"), broker=self.broker, data_dir=self.workdir)
        # The shipped settings, not the suite's (which check every event against its
        # schema, and hash passwords with MD5): Django's own hasher (seed_users keeps
        # sign-ups fast without another one) and the settings' presence keepalive (the
        # suite's is 5 s, a presence refresh from every phone every 5 s).
        # The rate limits run as shipped (the buckets in the database, one upsert per
        # POST: that cost is measured) with rates no load step reaches: signups come
        # from one address, and a load user sends more than a person
        # (tests.support.stack.server_env sets them).
        env["DJANGO_SETTINGS_MODULE"] = "chatserver.settings"
        for name in ("PASSWORD_HASHERS", "MQTT_KEEPALIVE", "OUTBOX_CHECK_SCHEMAS", "LOG_LEVEL"):
            env.pop(name, None)
        if self.push_sink is not None:
            env.update(self._push_env())
        self.env = env
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                                 capture_output=True, text=True)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
        for worker in ("relay", "presence", "push"):
            process = ServerProcess(worker, [sys.executable, "manage.py", "worker", worker], env, self.workdir)
            self.processes.append(process.start())
        web, self.url = start_web(env, self.workdir, broker_auth_port=getattr(self.broker, "auth_port", None))
        self.processes.extend(web)
        self._wait_healthy(timeout=30)

    def _new_broker(self):
        if self.broker_kind == "mosquitto":
            from tests.support.mosquitto import MosquittoBroker, make_workdir

            return MosquittoBroker(make_workdir("chat-bench-mqtt-"))
        from tests.support.rabbitmq import RabbitCluster, RabbitNode, make_workdir

        if self.cluster:
            return RabbitCluster(make_workdir("chat-bench-rabbitmq-cluster-"))
        return RabbitNode(make_workdir("chat-bench-rabbitmq-"))

    def nodes(self) -> dict[str, object]:
        """The broker's processes by name: "broker" (Mosquitto, one RabbitMQ node), or
        "broker chat-a" ... for a cluster's nodes; only those running."""
        if self.cluster:
            return {f"broker {node.nodename.split('@')[0]}": node for node in self.broker.nodes if node.running}
        return {"broker": self.broker}

    def stop_node(self, name: str) -> None:
        """Stop one of the cluster's nodes (gracefully: its clients are disconnected);
        never the first, which the relay and the other workers are connected to."""
        node = next(node for node in self.broker.nodes if node.nodename.split("@")[0] == name)
        if node is self.broker.nodes[0]:
            raise ValueError(f"{name} is the workers' node")
        node.stop()

    def seed_users(self, names: list[str], password: str) -> dict[str, str]:
        """Sign up `names` (all with `password`) before a timed window; return name -> token.

        The real signup (accounts.services.user_signup: user, device, token, broker
        accounts through the relay), except that the password is hashed once, with the
        shipped hasher, and that hash is stored for every user (bench/seed_users.py):
        logins against it cost what they cost in production. Signing up thousands of
        users over HTTP would cost ~0.4 s of CPU each (PBKDF2), minutes of set-up."""
        if not names:
            return {}
        result = subprocess.run([sys.executable, str(SEED_SCRIPT)], cwd=ROOT, env=self.env, text=True,
                                input=json.dumps({"names": names, "password": password}), capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"seeding users failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout)

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
        processes included (granian's workers, PostgreSQL's backends, exited ones too)."""
        return trees_cpu(self.roots())

    def roots(self) -> dict[str, int]:
        """The pid of each part of the stack (the parent of its processes)."""
        roots = {p.name: p.proc.pid for p in self.processes if p.proc is not None}
        # A RabbitMQ node's process is its start script; the Erlang VM (beam.smp) and its
        # helpers are its descendants, counted with it (its epmd, ~0, is not).
        roots |= {name: node.process.pid for name, node in self.nodes().items()}
        try:
            roots["postgres"] = int((self.pg.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        return roots

    def rss_mib(self) -> dict[str, float]:
        """Resident memory (VmRSS, MiB) of each long-running process of the stack now: each
        granian worker (`web worker 1`, `2`: the main process's children, each importing
        Django itself), the relay, presence and push workers, the broker and nginx's master.
        RSS counts pages shared with other processes: it is what the goals name, and what
        `ps` shows an operator."""
        from tests.support.stack import child_pids

        roots = self.roots()
        out: dict[str, float] = {}
        web = roots.get("web")
        if web is not None:
            for index, pid in enumerate(sorted(child_pids(web)), start=1):
                out[f"web worker {index}"] = rss_mib(pid)
        for name in ("relay", "presence", "push", "front"):
            if name in roots:
                out[name] = rss_mib(roots[name])
        for name, node in self.nodes().items():
            # RabbitMQ: the Erlang VM, not the start script (a shell) above it.
            out[name] = rss_mib(getattr(node, "beam_pid", None) or node.process.pid)
        return {name: value for name, value in out.items() if value is not None}

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
            "database": f"PostgreSQL {self.pg.bindir.parent.name}, "
                        + ("fsync, synchronous_commit and full_page_writes OFF (--fast-db, not as shipped)"
                           if self.fast_db else "durable: Debian's stock settings (fsync, synchronous_commit on)"),
            "web": f"nginx (front/nginx.conf, access log on) before granian (WSGI) {WEB_WORKERS} workers x "
                   f"{WEB_THREADS} threads, the Procfile's command lines",
            "broker": self._broker_description(),
            "relay": "1 process",
            "presence": "1 process",
            "push": f"1 process, {'to a local FCM stand-in' if self.push_sink is not None else 'off'}",
            "hasher": "Django's default (PBKDF2); users signed up before the timed window, one hash for all",
            "rate limits": "on, buckets in the database (rates above the load)",
            "settings": "chatserver.settings defaults (no schema checks, presence keepalive 30 s)",
        }

    def _broker_description(self) -> str:
        if self.broker_kind == "mosquitto":
            return "mosquitto (project config)"
        version = _rabbitmq_version()
        if self.cluster:
            return (f"RabbitMQ {version}, 3 nodes on this machine (project config, quorum session queues), "
                    "phones spread over them, relay/presence/push on chat-a")
        return f"RabbitMQ {version}, 1 node (project config), Django deciding logins over nginx's loopback listener"

    def stop(self, *, keep: bool = False) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.broker is not None:
            try:
                self.broker.stop()
            finally:
                if self.broker_kind == "rabbitmq":
                    self.broker.kill()  # whatever a failed stop left (a no-op after a clean one)
            if not keep:
                shutil.rmtree(self.broker.workdir, ignore_errors=True)
        if self.pg is not None:
            self.pg.stop()
        if keep:
            print(f"bench stack directory kept: {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _rabbitmq_version() -> str:
    """Debian's package version of rabbitmq-server, else "(version unknown)"."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
                                capture_output=True, text=True, timeout=10)
    except OSError:
        return "(version unknown)"
    return result.stdout.strip() or "(version unknown)"


def bench_cluster(*, fast_db: bool = False):
    """A throw-away PostgreSQL cluster (tests/support/postgres.py) with Debian's stock
    settings, durable: the suite's turns fsync off. `fast_db`: the suite's settings."""
    from tests.support.postgres import PostgresCluster

    class Cluster(PostgresCluster):
        def _options(self) -> str:
            options = super()._options()
            return options if fast_db else _stock_options(options)

    return Cluster()


def _stock_options(options: str) -> str:
    """The suite's server options without its durability shortcuts, Debian's max_connections."""
    # What Debian's postgresql.conf sets beyond initdb's defaults changes nothing here
    # but max_connections (100); initdb's defaults, which Debian keeps, are durable:
    # fsync, synchronous_commit and full_page_writes on, shared_buffers 128MB.
    head, *settings = options.split(" -c ")
    kept = [c for c in settings if not c.startswith(("fsync", "synchronous_commit", "full_page_writes",
                                                     "max_connections"))]
    return " -c ".join([head, *kept, "max_connections=100"])


def start_web(env: dict[str, str], workdir: Path, *, broker_auth_port: int | None = None):
    """The HTTP tier as the Procfile starts it: its `front:` line (nginx, on
    front/nginx.conf rendered into `workdir`/front/) and its `web:` line (granian on the
    front's socket), each run by a shell as honcho does, nginx on a free port of
    127.0.0.1; returns ([front, web], url) once Django answers through nginx.
    `broker_auth_port`: nginx also serves the broker-auth endpoints there, on loopback
    (a RabbitMQ broker's), as `make run` does."""
    from chatserver import frontconf
    from tests.support.postgres import free_port
    from tests.support.stack import ServerProcess, django_answers, procfile_command, wait_until

    port = free_port()
    # nginx's workers (www-data, when root) pass through it to the socket.
    os.chmod(workdir, 0o711)
    frontconf.prepare(data_dir=workdir, port=port, bind="127.0.0.1",
                      max_attachment=int(env.get("ATTACHMENT_MAX_SIZE", 25 * 1024 * 1024)),
                      broker_auth_port=broker_auth_port)
    web_env = {**env, "DATA_DIR": str(workdir), "HTTP_BIND": "127.0.0.1", "HTTP_PORT": str(port),
               "WEB_WORKERS": str(WEB_WORKERS), "WEB_THREADS": str(WEB_THREADS),
               "PATH": f"{env.get('PATH', os.defpath)}:/usr/local/sbin:/usr/sbin:/sbin"}
    web_env.pop("HTTPS_CERT", None)
    web_env.pop("HTTPS_KEY", None)
    processes = []
    for name in ("front", "web"):
        processes.append(ServerProcess(name, procfile_command(name), web_env, workdir).start())
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        for process in processes:
            if not process.alive():
                raise RuntimeError(f"{process.name} died:\n{process.log_tail()}")
        return django_answers(url)

    wait_until(answers, 20, f"granian behind nginx on port {port}", interval=0.05)
    return processes, url


def rss_mib(pid: int) -> float | None:
    """VmRSS of `pid` in MiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def tree_cpu(root: int) -> float:
    """Seconds of CPU of process `root` and all its descendants, live or reaped."""
    return trees_cpu({"root": root})["root"]


def trees_cpu(roots: dict[str, int]) -> dict[str, float]:
    """Seconds of CPU of each named root process and all its descendants, live or reaped,
    from one reading of /proc (the sampler runs 4 times a second: its own CPU counts)."""
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
    totals = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
                todo += children.get(pid, [])
        totals[name] = total
    return totals


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
