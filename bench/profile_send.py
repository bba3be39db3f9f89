"""Where a message POST's time goes, on a fresh bench stack (the shipped configuration).

    python bench/profile_send.py [--posts 2000] [--fast-db]
    python bench/profile_send.py --instructions   # valgrind's count: 120 POSTs less 20

Starts a BenchStack, signs up two users with a direct chat, then in a child process with
the stack's settings (Django's test client, the whole middleware stack and DRF view, one
thread, against the stack's PostgreSQL, with the relay and broker running):

1. every statement one POST sends to PostgreSQL, as PostgreSQL logged them
   (log_statement = all on that connection: BEGIN, COMMIT and the health check included);
2. wall time per POST without a profiler (median of --posts), and each SQL statement's
   time seen from Python (execute to result, the round trip and PostgreSQL's work), and
   the commit's;
3. a cProfile (on CPU time) of --posts POSTs, summed into the parts of the path;
4. each part alone, called in a loop without a profiler (the token check, the bucket
   statement, the input serializer, the send service, the response's shape, JSON
   rendering, the health check): CPU microseconds of this process and of its PostgreSQL
   backend, and wall time; the rest of a POST's CPU is middleware, DRF's and Django's
   request/response machinery and the test client.

`--instructions` counts instead the web side's instructions per POST (valgrind's
callgrind, the same child with 20 and with 120 POSTs, the difference over 100): not
moved by other processes on the machine, so two commits compare on one run each.

What the WSGI server adds per request (granian: its HTTP parsing, the WSGI environ, the
hand-off to a Python thread) is not in this process: compare with the bench's CPU per
message for the web process.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def api(url: str, method: str, path: str, body=None, token: str | None = None):
    request = urllib.request.Request(f"{url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Token {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def backend_cpu(pid: int) -> float:
    """CPU seconds used so far by one PostgreSQL backend (this machine's /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def outer(args) -> int:
    from stack import ROOT, BenchStack

    with BenchStack(fast_db=args.fast_db) as stack:
        tokens = stack.seed_users(["prof-a", "prof-b"], "profile-" + os.urandom(8).hex())
        b = api(stack.url, "GET", "/accounts/me/", token=tokens["prof-b"])
        chat = api(stack.url, "POST", "/chats/", {"members": [b["id"]]}, token=tokens["prof-a"])
        job = {"token": tokens["prof-a"], "chat": chat["id"], "posts": args.posts, "log": str(stack.pg.logfile)}
        if args.instructions:
            counts = {}
            for posts in (20, 120):
                out = Path(stack.env["DATA_DIR"]) / f"callgrind.{posts}"
                subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                                __file__, "--inner"], cwd=ROOT, env=stack.env, text=True, check=True,
                               input=json.dumps({**job, "posts": posts, "count_only": True}),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                counts[posts] = int(re.search(r"^summary: (\d+)", out.read_text(), re.M).group(1))
            print(f"web side, instructions a POST: {(counts[120] - counts[20]) / 100 / 1e6:.2f} M "
                  f"(callgrind: {counts[20]:,} for 20 POSTs, {counts[120]:,} for 120)")
            return 0
        result = subprocess.run([sys.executable, __file__, "--inner"], cwd=ROOT, env=stack.env, text=True,
                                input=json.dumps(job))
        print(f"\nstack: {json.dumps(stack.describe())}")
        return result.returncode


def inner() -> int:
    job = json.load(sys.stdin)
    import django

    django.setup()
    from django.db import close_old_connections, connection
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Token {job['token']}", HTTP_HOST="127.0.0.1")
    path = f"/chats/{job['chat']}/messages/"
    counter = [0]

    def post():
        # What Django's WSGI handler does on request_started (the test client skips it): with
        # CONN_MAX_AGE and health checks on, the next query first checks the connection.
        close_old_connections()
        counter[0] += 1
        response = client.post(path, {"content": f"profile {counter[0]}", "client_id": f"p-{os.getpid()}-{counter[0]}"},
                               content_type="application/json")
        assert response.status_code == 201, (response.status_code, response.content[:300])
        return response

    if job.get("count_only"):  # --instructions: these POSTs and nothing else
        for _ in range(job["posts"]):
            post()
        return 0
    for _ in range(200):  # warm: imports, caches, the connection
        post()

    # 1. The statements of one POST, as PostgreSQL saw them.
    log = Path(job["log"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
        cursor.execute("SET log_statement = 'all'")
    start = log.stat().st_size
    post()
    time.sleep(0.3)
    with connection.cursor() as cursor:
        cursor.execute("SET log_statement = 'none'")
    statements, mine = [], False
    # "statement: <sql>" for the simple protocol, "execute <name>: <sql>" for a prepared
    # statement (chatserver.prepared), logged once per execution.
    logged = re.compile(r"(?:statement|execute [^:]*): (.*)")
    for line in log.read_text(errors="replace")[start:].splitlines():
        if line[:4].isdigit():  # a new entry: "2026-12-01 ... [pid] ..."
            found = logged.search(line) if f"[{pid}]" in line else None
            mine = found is not None
            if mine:
                prepared = "[prepared] " if found.group(0).startswith("execute ") else ""
                statements.append(prepared + found.group(1))
        elif mine:  # a statement's next lines
            statements[-1] += " " + line.strip()
    statements = [s for s in statements if not s.startswith("SET log_statement")]
    print(f"\n1. one POST: {len(statements)} statements to PostgreSQL (round trips):")
    for s in statements:
        print(f"   {s[:150]}")

    # 2. Wall time per POST, and per statement / commit as seen from Python.
    timings: dict[str, list[float]] = {}

    def key(sql: str) -> str:
        words = sql.split()
        head = " ".join(words[:2])
        for table in ("accounts_device", "chats_chat", "chats_message", "chatserver_outboxevent", "outbox",
                      "ratelimit", "bucket", "chats_membership"):
            if table in sql:
                return f"{head} .. {table}"
        return f"{head} .."

    def wrapper(execute, sql, params, many, context):
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            timings.setdefault(key(sql), []).append(time.perf_counter() - t)

    walls = []
    n = job["posts"]
    cpu, backend = time.process_time(), backend_cpu(pid)
    for _ in range(n):
        t = time.perf_counter()
        post()
        walls.append(time.perf_counter() - t)
    cpu, backend = (time.process_time() - cpu) / n, (backend_cpu(pid) - backend) / n
    wall_median = statistics.median(walls)
    # With the per-statement timer (its own cost is ~1 us a statement).
    real_commit = connection._commit

    def commit():
        t = time.perf_counter()
        try:
            return real_commit()
        finally:
            timings.setdefault("COMMIT", []).append(time.perf_counter() - t)

    connection._commit = commit
    with connection.execute_wrapper(wrapper):
        for _ in range(n):
            post()
    connection._commit = real_commit
    print(f"\n2. per POST, in process, no profiler ({n} POSTs, one after the other):")
    print(f"   CPU: this process (Django, DRF, psycopg) {cpu * 1e6:.0f} us, its PostgreSQL backend {backend * 1e6:.0f} us")
    print(f"   wall: median {wall_median * 1e6:.0f} us, mean {statistics.mean(walls) * 1e6:.0f} us "
          "(waiting included: round trips, fsync, other processes on these cores)")
    print("   SQL as seen from Python (execute -> result: round trip + PostgreSQL), per POST:")
    total_sql = 0.0
    for name, values in sorted(timings.items(), key=lambda kv: -sum(kv[1])):
        per_post = sum(values) / n
        total_sql += per_post
        print(f"   {per_post * 1e6:7.0f} us  {len(values) / n:.2f}x  median {statistics.median(values) * 1e6:5.0f} us  {name}")
    print(f"   {total_sql * 1e6:7.0f} us  in all (the health check's SELECT 1 is not in these: psycopg directly)")

    # 3. cProfile, summed into the path's parts.
    # CPU time as the profiler's clock: what each part costs this process, not how long
    # it waited (for PostgreSQL, the disk or the CPU).
    profile = cProfile.Profile(time.process_time)
    t = time.process_time()
    profile.enable()
    for _ in range(n):
        post()
    profile.disable()
    profiled = (time.process_time() - t) / n
    stats = pstats.Stats(profile)
    parts = [
        ("authentication (token -> device, user)", ("authentication.py", "authenticate")),
        ("throttle (the send bucket statement)", ("throttling.py", "allow_request")),
        ("request parsing (JSON body)", ("rest_framework/request.py", "_parse")),
        ("input validation, plain message (message_create_plain)", ("chats/serializers.py", "message_create_plain")),
        ("input validation, other bodies (MessageCreateInput.is_valid)", ("rest_framework/serializers.py", "is_valid")),
        ("message_send service (seq, insert, outbox, commit)", ("message_send.py", "message_send")),
        ("   of which: transaction commit", ("django/db/backends/base/base.py", "commit")),
        ("response shape (shapes.message_output)", ("chats/shapes.py", "message_output")),
        ("JSON rendering (the view's OrjsonRenderer)", ("chatserver/renderers.py", "render")),
        ("DRF view dispatch in all (APIView.dispatch)", ("rest_framework/views.py", "dispatch")),
        ("Django handler in all (middleware + view)", ("django/core/handlers/base.py", "get_response")),
        ("connection health check (SELECT 1)", ("django/db/backends/postgresql/base.py", "is_usable")),
        ("all SQL execution (psycopg execute)", ("psycopg/cursor.py", "execute")),
    ]
    print(f"\n3. cProfile on CPU time, {n} POSTs: {profiled * 1e6:.0f} us of CPU a POST under the profiler "
          f"({profiled / cpu:.2f}x the unprofiled CPU; Python-heavy parts are inflated most):")
    for label, (file_part, function) in parts:
        cum = sum(v[3] for k, v in stats.stats.items() if file_part in k[0] and k[2] == function)
        print(f"   {cum / n * 1e6:7.0f} us  {cum / n / profiled:5.1%}  {label}")
    parts_alone(job, pid, cpu, backend, n)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    print("\n   top functions by own time:")
    print("\n".join("   " + line for line in out.getvalue().splitlines()[6:40]))
    return 0


def parts_alone(job: dict, pid: int, post_cpu: float, post_backend: float, n: int) -> None:
    """Section 4: each part of the path in a loop of its own, no profiler."""
    from django.db import connection
    from rest_framework.renderers import JSONRenderer

    from accounts.authentication import TOKEN_CACHE, DeviceTokenAuthentication
    from accounts.models import hash_token
    from chats import shapes
    from chats.serializers import MessageCreateInput, message_create_plain
    from chatserver.renderers import OrjsonRenderer
    from chats.services.message_send import message_send
    from chatserver import ratelimit
    from chatserver.throttling import limit_for

    auth = DeviceTokenAuthentication()
    user, device = auth.authenticate_credentials(job["token"])
    token_hash = hash_token(job["token"])
    TOKEN_CACHE.put(device)
    limit = limit_for("send")
    counter = [0]

    def send():
        counter[0] += 1
        # With the device, as the POST passes it: the write statement checks it.
        return message_send(actor=user, chat_id=job["chat"], content=f"part {counter[0]}",
                            client_id=f"part-{os.getpid()}-{counter[0]}", device=device)[0]

    message = send()
    data = shapes.message_output(message)
    body = {"content": "profile 1", "client_id": "p-1"}
    parts = [
        ("token, the POST's (TOKEN_CACHE.get: no query)", lambda: TOKEN_CACHE.get(token_hash)),
        ("token check (DeviceTokenAuthentication: SELECT device+user; other endpoints, not in the sum)",
         lambda: auth.authenticate_credentials(job["token"])),
        ("send bucket (ratelimit.take: one upsert, autocommit)", lambda: ratelimit.take(f"send:{user.id}", limit)),
        ("input check, plain message (message_create_plain: the POST's)", lambda: message_create_plain(body)),
        ("input serializer (MessageCreateInput.is_valid: other bodies; not in the sum)",
         lambda: MessageCreateInput(data=body).is_valid()),
        ("send service (message_send: BEGIN, seq+insert, outbox, COMMIT)", send),
        ("response shape (shapes.message_output)", lambda: shapes.message_output(message)),
        ("JSON rendering (OrjsonRenderer: the POST's)", lambda: OrjsonRenderer().render(data)),
        ("JSON rendering (DRF JSONRenderer: other endpoints; not in the sum)", lambda: JSONRenderer().render(data)),
        ("health check (SELECT 1, once a request)", lambda: connection.is_usable()),
    ]
    print(f"\n4. each part alone, {n} calls, no profiler: CPU us of this process / of its PostgreSQL backend, wall us")
    total_cpu = total_backend = 0.0
    for label, work in parts:
        for _ in range(50):
            work()
        walls = []
        cpu, backend = time.process_time(), backend_cpu(pid)
        for _ in range(n):
            t = time.perf_counter()
            work()
            walls.append(time.perf_counter() - t)
        cpu, backend = (time.process_time() - cpu) / n, (backend_cpu(pid) - backend) / n
        if "not in the sum" not in label:
            total_cpu, total_backend = total_cpu + cpu, total_backend + backend
        print(f"   {cpu * 1e6:6.0f} / {backend * 1e6:5.0f} us CPU  wall median {statistics.median(walls) * 1e6:6.0f} us  {label}")
    print(f"   {total_cpu * 1e6:6.0f} / {total_backend * 1e6:5.0f} us CPU  the parts in all; a whole POST: "
          f"{post_cpu * 1e6:.0f} / {post_backend * 1e6:.0f}: the rest, {(post_cpu - total_cpu) * 1e6:.0f} us, is "
          "middleware, DRF's and Django's request/response handling and the test client")


if __name__ == "__main__":
    if "--inner" in sys.argv:
        sys.exit(inner())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--fast-db", action="store_true")
    parser.add_argument("--instructions", action="store_true", help="count instructions per POST (valgrind)")
    sys.exit(outer(parser.parse_args()))
