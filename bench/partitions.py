"""How fast relays drain a backlog with RELAY_PARTITIONS=1 and 3, and what their SELECT costs.

    python bench/partitions.py [--rows 6000] [--members 100] [--groups 1 6]

On a fresh PostgreSQL (stock durability) and Mosquitto from the project's config, both
throw-away: for each layout (the rows in one group, or spread over several groups of
`--members` members) and each N, it queues `--rows` message rows (a 100-member group's
row is 101 publishes: each member's user topic and the chat topic) in one transaction
while N relay processes (`manage.py worker relay`, RELAY_PARTITIONS=N) wait, and times
from that commit until the outbox is empty. Nobody subscribes: this measures the relays
and the broker's intake, not the fan-out to phones. Then EXPLAIN ANALYZE of one relay's
SELECT with the backlog in place. Prints one line per run and writes the whole as JSON to
bench/results/partitions-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAYLOAD_PAD = "x" * 300  # a message.created event is a few hundred bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-partitions-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatserver.settings")
    os.environ["DATA_DIR"] = str(workdir)
    os.environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    os.environ["MQTT_ADMIN_PASSWORD"] = secrets.token_urlsafe(24)
    import psycopg

    from bench.stack import bench_cluster, trees_cpu
    from tests.support.mosquitto import MosquittoBroker, make_workdir
    from tests.support.stack import ServerProcess, server_env

    pg = bench_cluster().start()
    broker = MosquittoBroker(make_workdir("chat-bench-mqtt-"))
    results = {"rows": args.rows, "members": args.members, "runs": [], "explain": {}}
    try:
        with psycopg.connect(pg.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE chat")
        broker.start()
        base_env = server_env(database_url=pg.url("chat"), broker=broker, data_dir=workdir)
        base_env["DJANGO_SETTINGS_MODULE"] = "chatserver.settings"
        for name in ("PASSWORD_HASHERS", "MQTT_KEEPALIVE", "OUTBOX_CHECK_SCHEMAS", "LOG_LEVEL"):
            base_env.pop(name, None)
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=base_env,
                                 capture_output=True, text=True)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
        db = psycopg.connect(pg.url("chat"), autocommit=True)
        for groups in args.groups:
            for n in args.partitions:
                env = dict(base_env, RELAY_PARTITIONS=str(n))
                db.execute("DELETE FROM chat_relay_status")
                relays = [ServerProcess(f"relay-{n}-{k}", [sys.executable, "manage.py", "worker", "relay"], env,
                                        workdir).start() for k in range(n)]
                try:
                    wait_relays(db, n)
                    queue(db, rows=args.rows, groups=groups, members=args.members, partitions=n)
                    cpu_before = trees_cpu({**{f"r{k}": r.proc.pid for k, r in enumerate(relays)},
                                            "broker": broker.process.pid})
                    load_before = os.getloadavg()[0]
                    started = time.monotonic()
                    while db.execute("SELECT count(*) FROM chat_outbox").fetchone()[0]:
                        time.sleep(0.05)
                    seconds = time.monotonic() - started
                    cpu_after = trees_cpu({**{f"r{k}": r.proc.pid for k, r in enumerate(relays)},
                                           "broker": broker.process.pid})
                    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
                finally:
                    for relay in relays:
                        relay.stop()
                relay_cpu = sum(v for name, v in cpu.items() if name.startswith("r"))
                run = {"groups": groups, "partitions": n, "seconds": round(seconds, 2),
                       "rows_per_s": round(args.rows / seconds),
                       "publishes_per_s": round(args.rows * (args.members + 1) / seconds),
                       "relay_cpu_s": round(relay_cpu, 2), "broker_cpu_s": round(cpu["broker"], 2),
                       "relay_cpu_us_per_publish": round(relay_cpu * 1e6 / (args.rows * (args.members + 1)), 2),
                       "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
        # The SELECT of partition 1 of 3 with the backlog queued (no relay running).
        for groups in args.groups:
            db.execute("DELETE FROM chat_outbox")
            db.execute("VACUUM ANALYZE chat_outbox")
            queue(db, rows=args.rows, groups=groups, members=args.members, partitions=3)
            db.execute("ANALYZE chat_outbox")
            for n, k in ((1, 0), (3, 1), (3, 2)):
                # The relay's own (`partition` indexed with the id), and the first shape
                # tried (a filter on the key: a scan and a sort of the whole table).
                where = "" if n == 1 else f"WHERE partition = {k} "
                if n == 3:
                    plan = db.execute("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM chat_outbox WHERE"
                                      f" MOD(partition_key, 3) = {k} ORDER BY id LIMIT 500").fetchall()
                    key = f"groups={groups} N=3 k={k} on MOD(partition_key, 3)"
                    results["explain"][key] = [line for (line,) in plan]
                    print(key, [line for (line,) in plan if "Execution Time" in line][0].strip(), flush=True)
                plan = db.execute(
                    "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM chat_outbox " + where + "ORDER BY id LIMIT 500"
                ).fetchall()
                key = f"groups={groups} N={n} k={k}"
                results["explain"][key] = [line for (line,) in plan]
                timing = [line for (line,) in plan if "Execution Time" in line]
                print(key, timing[0].strip() if timing else "", flush=True)
        db.close()
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)
        pg.stop()
    out = ROOT / "bench" / "results" / f"partitions-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    shutil.rmtree(workdir, ignore_errors=True)


def wait_relays(db, n: int, timeout: float = 30) -> None:
    """Until n partitions report a fresh heartbeat with the broker answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (fresh,) = db.execute(
            "SELECT count(*) FROM chat_relay_status WHERE id <= %s AND heartbeat_at > now() - interval '2 s'"
            " AND broker_connected AND broker_answered_at > now() - interval '2 s'", [n]).fetchone()
        if fresh == n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{n} relays did not report")


def queue(db, *, rows: int, groups: int, members: int, partitions: int) -> None:
    """`rows` message rows round-robin over `groups` groups (chat ids 1..groups), each to
    `members` users and the chat's topic, in one transaction."""
    with db.transaction():
        with db.cursor() as cursor:
            values = []
            for i in range(rows):
                chat = 1 + i % groups
                user_ids = list(range(1000 * chat, 1000 * chat + members))
                payload = json.dumps({"type": "message.created", "chat": chat, "data": {"n": i, "pad": PAYLOAD_PAD}})
                values.append((payload, json.dumps(user_ids), chat, chat, chat % partitions))
            cursor.executemany(
                "INSERT INTO chat_outbox (created_at, access, payload, user_ids, chat_id, partition_key, partition)"
                " VALUES (now(), '[]', %s, %s, %s, %s, %s)", values)


if __name__ == "__main__":
    main()
