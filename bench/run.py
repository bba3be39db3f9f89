"""`make bench`: a fresh stack on PostgreSQL, the standard load profiles, one table.

Profiles (each step is one `chat-sim load --json` run, a subprocess, against the stack):
  single   one closed-loop sender in one of 100 direct chats (it sends again as soon as
           answered): the POST's latency with nothing else going on;
  1:1      200 phones in 100 direct chats, at increasing rates until the server
           saturates (accepted < 90% of the target; --rates: those rates only);
  saturated
           the same phones and chats, 32 closed-loop senders (each sends again as soon
           as answered): the most the server accepts, and at what latency;
  group    one 100-member group, at increasing rates until copies fall behind
           (receipt p50 > 1 s, or any copy lost within the grace period); its phones are
           mosquitto_sub processes (chat-sim load --receiver mosquitto_sub: a copy costs
           the load generator ~14 us of C instead of ~60-80 us of paho; they publish no
           presence, which this profile does not measure), paho clients where
           mosquitto_sub is not installed or with --group-receiver paho;
  idle     2,000 phones connected, 100 of them chatting in 50 direct chats;
  presence-burst
           100 msg/s in 100 direct chats (200 phones, sending at once: --settle 0) and,
           halfway, 1,000 more phones connecting at once, each publishing its presence
           (`online`, retained, with its Last Will) as every phone does: POST->MQTT
           receipt p50/p95/p99 of what was sent in the 5 s (--quick: 3 s) from the burst
           on against as long just before it, and the ratio of the p99s; then the same
           burst again with the presence worker stopped (SIGSTOP), to tell presence's own
           cost (p99 with it / without it; the goal: at most 2) from the burst's (1,000
           connections to the broker and in the load generator, on the same cores).
           Each of its steps sends for 20 s (--quick: 12 s), whatever --duration says.
  push     1,000 users in 500 direct chats, none connected, each with a push token, 100
           msg/s for 20 s (--quick: 8 s) on a second stack with push on, pushing to a local
           FCM stand-in (chat_sim's fcm-sink, in this process): pushes/s and the push
           latency p50/p99 (the message's created_at, just before its commit -> the sink
           received it); and the same load on the first stack (push off) for the POST p99
           beside it.

The stack is the shipped configuration (bench/stack.py: durable PostgreSQL, the real
password hasher, the Procfile's nginx and granian, nginx's access log on); --fast-db runs every
profile a second time on PostgreSQL with fsync off, those rows marked [fast-db].

The broker is Mosquitto, or with --broker rabbitmq (`make bench BROKER=rabbitmq`) one
RabbitMQ node from the project's config (bench/stack.py), the same profiles unchanged: the
phones (paho and mosquitto_sub) log in with their device's credentials and client id over
MQTT 3.1.1, which Django decides through nginx's loopback broker-auth listener. With
--cluster: three RabbitMQ nodes joined (chat-a, chat-b, chat-c), phone n on node n mod 3
(chat-sim load --mqtt-ports), the relay, presence and push workers on chat-a; every
profile runs, then chat-c is stopped and every profile but push runs again (rows marked
[chat-c down]), chat-c's phones spread over chat-a and chat-b, their sessions (quorum
queues) resumed there. The push profile's second stack (push on) is one node: its phones
are offline, the broker does not carry its pushes. The broker's CPU is its process tree:
mosquitto, or a node's start script with its Erlang VM (beam.smp) and helpers, per node.

The table is printed and saved with every report under bench/results/<UTC timestamp>
(.txt and .json). Users are signed up before any step (BenchStack.seed_users: the real
signup, one real hash for all) and reused by later steps. The CPU table gives each
process's CPU per accepted message while sending, and the load generator's share of the
machine (cores busy), so that a load generator near the cores' limit shows.

    python bench/run.py [--duration SECONDS] [--only single,1:1,saturated,group,idle,presence-burst,push] [--quick]
    python bench/run.py --profile presence-burst     # that profile alone
    python bench/run.py --only 1:1,saturated --rates 100,200 --fast-db
    python bench/run.py --broker rabbitmq [--cluster] --quick

chat-sim runs from this checkout's android-client-sim/ (`python -m chat_sim`), whatever
version the virtualenv has installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stack import ROOT, BenchStack, trees_cpu  # noqa: E402  (bench/ is not a package)

sys.path.insert(0, str(ROOT / "android-client-sim"))
from chat_sim.fcm_sink import FcmSink  # noqa: E402

SIM_DIR = ROOT / "android-client-sim"
CHAT_SIM = [sys.executable, "-m", "chat_sim"]
RESULTS = HERE / "results"
PROFILES = ["single", "1:1", "saturated", "group", "idle", "presence-burst", "push"]

ONE_TO_ONE_RATES = [50, 100, 150, 200, 300, 400, 600, 800, 1200]
GROUP_RATES = [10, 25, 50, 75, 100, 150, 200, 300]
BURST_PHONES, BURST_RATE, BURST_GOAL = 1000, 100, 2.0
PUSH_USERS, PUSH_RATE = 1000, 100
SATURATED_SENDERS = 32
DOWN_NODE = "chat-c"  # --cluster: the node stopped for the second pass (the workers are on chat-a)
GROUP_RECEIVER = "mosquitto_sub" if shutil.which("mosquitto_sub") else "paho"


def load(stack: BenchStack, home: Path, *, users: int, chats: int, group_size: int, rate: float,
         duration: float, grace: float, extra: tuple[str, ...] = ()) -> dict:
    """One `chat-sim load` run against `stack`, with the CPU each process used while the
    load was sending (`cpu_ms_per_message`)."""
    extra = (*extra, *phone_ports(stack))
    seed(stack, home, users=users, extra=extra)
    args = [*CHAT_SIM, "--server", stack.url, "--json", "load", "--users", str(users), "--chats", str(chats),
            "--group-size", str(group_size), "--rate", str(rate), "--duration", str(duration),
            "--grace", str(grace), *extra]
    env = {**os.environ, "CHAT_SIM_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SIM_DIR), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
        samples = CpuSampler(stack, process.pid).run_until(process, timeout=duration + grace + 600)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode not in (0, 1):  # 1: lost/duplicated/out of order, reported as such
        raise RuntimeError(f"chat-sim load failed ({process.returncode}):\n{stderr[-3000:]}")
    report = json.loads(stdout)
    report["wall_s"] = round(time.monotonic() - started, 1)
    # After the step, its grace included: what the processes hold once the load is over.
    report["rss_mib"] = stack.rss_mib()
    window = report.get("window", {})
    if "sending_from" in window and "sending_until" in window and report["accepted"]:
        spent = samples.between(window["sending_from"], window["sending_until"])
        machine_s = spent.pop(MACHINE, 0.0)
        brokers = [name for name in spent if name.startswith("broker ")]
        if len(brokers) > 1:  # a cluster's nodes: also all of them together
            spent["brokers, all nodes"] = sum(spent[name] for name in brokers)
        report["cpu_ms_per_message"] = {name: round(1000 * v / report["accepted"], 2) for name, v in spent.items()}
        seconds = window["sending_until"] - window["sending_from"]
        report["cpu_cores"] = {name: round(v / seconds, 3) for name, v in spent.items()}
        ours = sum(v for name, v in spent.items() if name != "brokers, all nodes")
        # What else ran on the machine meanwhile (other users of a shared machine): the
        # figures of a step with much of it are not this stack's alone.
        report["cpu_cores_others"] = round(max(0.0, machine_s - ours) / seconds, 3)
    return report


def phone_ports(stack: BenchStack) -> tuple[str, ...]:
    """`chat-sim load --mqtt-ports` for a cluster: phone n on node n mod 3; a stopped
    node's phones spread over the running ones (slot s of 3 x running: node s mod 3 if it
    runs, else the running nodes in turn), so that no other phone changes node."""
    if not stack.cluster:
        return ()
    every = [node.port for node in stack.broker.nodes]
    up = [node.port for node in stack.broker.nodes if node.running]
    n = len(every)
    slots = [every[s % n] if every[s % n] in up else up[(s // n) % len(up)] for s in range(n * len(up))]
    return ("--mqtt-ports", ",".join(map(str, slots)))


def seed(stack: BenchStack, home: Path, *, users: int, extra: tuple[str, ...]) -> None:
    """Sign up, before the step, the users `chat-sim load` would otherwise sign up over
    HTTP (PREFIX-0 .. PREFIX-<users + burst phones - 1>), into its token cache."""
    from chat_sim.profiles import write_private_json

    def option(name: str, default: str) -> str:
        return extra[extra.index(name) + 1] if name in extra else default

    count = users + int(option("--burst-phones", "0"))
    names = [f"{option('--user-prefix', 'load')}-{i}" for i in range(count)]
    host_port = stack.url.split("://", 1)[1].replace(":", "_")
    path = home / "load" / f"{host_port}.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    password = cache.setdefault("password", "load-" + os.urandom(12).hex())
    known = cache.setdefault("users", {})
    missing = [name for name in names if name not in known]
    if not missing:
        return
    started = time.monotonic()
    for name, token in stack.seed_users(missing, password).items():
        known[name] = {"token": token}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_json(path, cache)
    print(f"  seeded {len(missing)} users ({time.monotonic() - started:.1f} s)", flush=True)


class CpuSampler:
    """CPU seconds of every process of the stack, the load generator's (with its receiver
    processes) and this one's (the FCM stand-in), sampled every SAMPLE_EVERY seconds."""

    SAMPLE_EVERY = 0.25

    def __init__(self, stack: BenchStack, load_pid: int) -> None:
        self.stack, self.load_pid = stack, load_pid
        self.samples: list[tuple[float, dict[str, float]]] = []

    def sample(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        roots = {**self.stack.roots(), "load generator": self.load_pid}
        self.samples.append((time.time(), {
            **trees_cpu(roots),
            "bench (sampler, FCM stand-in)": usage.ru_utime + usage.ru_stime,
            MACHINE: machine_busy(),
        }))

    def run_until(self, process: subprocess.Popen, timeout: float) -> CpuSampler:
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError("chat-sim load did not finish in time")
            self.sample()
            time.sleep(self.SAMPLE_EVERY)
        return self

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds used by each from the last sample before `start` to the first after `end`."""
        before = [s for t, s in self.samples if t <= start] or [self.samples[0][1]]
        after = [s for t, s in self.samples if t >= end] or [self.samples[-1][1]]
        first, last = before[-1], after[0]
        return {name: max(0.0, last[name] - first.get(name, 0.0)) for name in last}


MACHINE = "machine"  # all CPU time of the machine, this bench's or not


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def row(profile: str, report: dict) -> dict:
    c = report["config"]
    return {
        "profile": profile,
        "phones": report["phones"],
        "chats": f"{report['chats']}x{c['group_size']}",
        "target": f"closed x{c['connections']}" if c.get("closed_loop") else f"{c['rate']:g}",
        "accepted": report["accepted_per_s"],
        "skipped": report["skipped"],
        "errors": sum(report["errors"].values()),
        "post": report["post_ms"],
        "receipt": report["receipt_ms"],
        "copies": report["copies_received"],
        "expected": report["copies_expected"],
        "lost": report["lost"],
        "dup": report["duplicated"],
        "ooo": report["out_of_order"],
    }


def saturated(report: dict) -> bool:
    return report["accepted_per_s"] < 0.9 * report["config"]["rate"]


def behind(report: dict) -> bool:
    p50 = report["receipt_ms"]["p50"]
    return report["lost"] > 0 or p50 is None or p50 > 1000


def render(rows: list[dict]) -> str:
    def ms(p: dict) -> str:
        return "-" if p["p50"] is None else f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f}"

    header = ["profile", "phones", "chats", "target/s", "accepted/s", "skipped", "errors",
              "POST ms p50/p95/p99", "POST->MQTT ms p50/p95/p99", "copies", "lost", "dup", "ooo"]
    lines = [[r["profile"], str(r["phones"]), r["chats"], r["target"], f"{r['accepted']:.0f}",
              str(r["skipped"]), str(r["errors"]), ms(r["post"]), ms(r["receipt"]),
              f"{r['copies']}/{r['expected']}", str(r["lost"]), str(r["dup"]), str(r["ooo"])] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def render_burst(report: dict) -> str:
    """The presence-burst profile's comparison, under the table."""
    b = report["burst"]

    def ms(p: dict) -> str:
        return "-" if p["p50"] is None else f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f}"

    ready = "not all ready" if b["ready_s"] is None else f"all ready {b['ready_s']:.1f} s later"
    copies = b.get("copies", {})
    lines = [
        f"{report['profile']}: {b['phones']} phones connecting at once {b['at_s']:g} s into "
        f"{report['config']['rate']:g} msg/s of 1:1 messages ({ready}); POST->MQTT ms p50/p95/p99 "
        f"of what was sent in {b['window_s']:g} s:",
        f"  before the burst  {ms(b['without_ms'])}  ({copies.get('without', 0)} copies)",
        f"  from the burst on {ms(b['during_ms'])}  ({copies.get('during', 0)} copies)",
        f"  p99 ratio         {b['p99_ratio']}  (what the burst costs in all: connections to the broker,",
        "                    the load generator's phones, presence; all on this machine's cores)",
    ]
    if "control_during_ms" in b:
        own = _ratio(b["during_ms"], b["control_during_ms"])
        verdict = "-" if own is None else ("within" if own <= BURST_GOAL else "NOT within")
        lines += [
            f"  the same burst, presence worker stopped: {ms(b['control_during_ms'])}",
            f"  presence's own cost: p99 with the presence worker / without: "
            f"{'-' if own is None else f'{own:.2f}'}  ({verdict} {BURST_GOAL:g}x)",
        ]
    return "\n".join(lines)


def render_cpu(reports: list[dict]) -> str:
    """CPU per accepted message and process, while the load was sending; and how many
    cores the load generator and the whole machine were busy."""
    reports = [r for r in reports if "cpu_ms_per_message" in r]
    names = list(dict.fromkeys(n for r in reports for n in r["cpu_ms_per_message"]))
    header = ["profile", "target/s", *names, "load gen cores", "bench cores", "others' cores"]
    lines = [[r["profile"], _target(r), *(f"{r['cpu_ms_per_message'][n]:.2f}" if n in r["cpu_ms_per_message"]
                                          else "-" for n in names),
              f"{r['cpu_cores'].get('load generator', 0):.2f}",
              f"{sum(v for n, v in r['cpu_cores'].items() if n != 'brokers, all nodes'):.2f}",
              f"{r.get('cpu_cores_others', 0):.2f}"]
             for r in reports]
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(["CPU ms per accepted message, by process (children included), while sending; cores busy "
                      f"(of {os.cpu_count()}): the load generator's, this bench's in all, and other processes' "
                      "on the machine meanwhile (not this bench: noise):",
                      fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*line) for line in lines)])


# Issue 12's goals for resident memory after a run.
RSS_GOALS_MIB = {"web worker": 120, "relay": 80}


def render_rss(reports: list[dict]) -> str:
    """Resident memory (MiB) of each process after each step, against the goals."""
    reports = [r for r in reports if r.get("rss_mib")]
    names = list(dict.fromkeys(n for r in reports for n in r["rss_mib"]))
    header = ["profile", "target/s", *names]
    lines = [[r["profile"], _target(r), *(f"{r['rss_mib'][n]:.0f}" if n in r["rss_mib"] else "-" for n in names)]
             for r in reports]
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    peaks = []
    for goal_name, goal in RSS_GOALS_MIB.items():
        values = [v for r in reports for n, v in r["rss_mib"].items() if n.startswith(goal_name)]
        if values:
            peaks.append(f"{goal_name} {max(values):.0f} MiB at most (goal <= {goal}: "
                         f"{'met' if max(values) <= goal else 'NOT met'})")
    return "\n".join(["RSS MiB of each process after each step (VmRSS):",
                      fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*line) for line in lines), "; ".join(peaks)])


def _target(report: dict) -> str:
    c = report["config"]
    return f"closed x{c['connections']}" if c.get("closed_loop") else f"{c['rate']:g}"


def render_push(report: dict) -> str:
    """The push profile's figures, under the table."""
    p, c = report["push"], report["config"]

    def ms(value) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    return "\n".join([
        f"push: {report['phones']} devices with tokens, none connected, {c['rate']:g} msg/s for {c['duration']:g} s",
        f"  pushes     {p['received']} received of {p['expected']} (missing {p['missing']}), {p['per_s']}/s",
        f"  latency    created_at -> FCM stand-in: p50 {ms(p['latency_ms']['p50'])}, "
        f"p99 {ms(p['latency_ms']['p99'])}, max {ms(p['latency_ms']['max'])}",
        f"  POST p99   push on {ms(report['post_ms']['p99'])}, push off {ms(p.get('post_p99_off_ms'))}",
    ])


def _ratio(a: dict, b: dict) -> float | None:
    if a.get("p99") is None or not b.get("p99"):
        return None
    return a["p99"] / b["p99"]


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = git.stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(), "commit": commit,
            "note": "load generator, server, relay, broker and database share these cores"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending per step")
    parser.add_argument("--only", "--profile", dest="only", default=",".join(PROFILES),
                        help=f"comma-separated profiles, of {', '.join(PROFILES)}")
    parser.add_argument("--rates", help="1:1: these rates (msg/s, comma-separated) instead of the steps to saturation")
    parser.add_argument("--burst-phones", type=int, default=BURST_PHONES,
                        help="presence-burst: phones connecting at once")
    parser.add_argument("--fast-db", action="store_true",
                        help="run every profile again on PostgreSQL with fsync off (rows marked [fast-db])")
    parser.add_argument("--group-receiver", choices=["paho", "mosquitto_sub"], default=GROUP_RECEIVER,
                        help=f"what hosts the group profile's phones (default here: {GROUP_RECEIVER})")
    parser.add_argument("--quick", action="store_true", help="short steps and few rates (a smoke run)")
    parser.add_argument("--broker", choices=["mosquitto", "rabbitmq"], default="mosquitto",
                        help="the broker of the stack (default mosquitto)")
    parser.add_argument("--cluster", action="store_true",
                        help="with --broker rabbitmq: three nodes; every profile, then again with chat-c stopped")
    args = parser.parse_args()
    if args.cluster and args.broker != "rabbitmq":
        parser.error("--cluster is a RabbitMQ cluster: add --broker rabbitmq")
    profiles = set(args.only.split(","))
    if profiles - set(PROFILES):
        parser.error(f"unknown profile(s): {', '.join(sorted(profiles - set(PROFILES)))}")
    duration = 3.0 if args.quick else args.duration
    one_rates = ONE_TO_ONE_RATES[:2] if args.quick else ONE_TO_ONE_RATES
    if args.rates:
        one_rates = [float(r) for r in args.rates.split(",")]
    group_rates = GROUP_RATES[:2] if args.quick else GROUP_RATES
    idle_phones = 300 if args.quick else 2000
    # presence-burst: sending for at + window + a tail, the burst `at` seconds in
    burst_at, burst_window, burst_duration = (6.0, 3.0, 12.0) if args.quick else (10.0, 5.0, 20.0)

    if not (SIM_DIR / "chat_sim").is_dir():
        print(f"{SIM_DIR}/chat_sim is missing", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    rows, reports, described = [], [], {}

    def run_profiles(stack: BenchStack, home: Path, mark: str, profiles: set[str] = profiles) -> None:
        def step(profile: str, on: BenchStack | None = None, **kwargs) -> dict:
            report = load(on or stack, home, **kwargs)
            report["profile"], report["kind"] = profile + mark, profile
            reports.append(report)
            rows.append(row(profile + mark, report))
            r = rows[-1]
            print(f"  {profile + mark:<6} {r['target']:>9}/s -> accepted {r['accepted']:.0f}/s, POST p50 "
                  f"{r['post']['p50']} ms, receipt p50 {r['receipt']['p50']} ms p99 {r['receipt']['p99']} ms, "
                  f"lost {r['lost']}, load generator {report.get('cpu_cores', {}).get('load generator')} cores, "
                  f"others {report.get('cpu_cores_others')} cores, "
                  f"RSS MiB {json.dumps(report.get('rss_mib'))} "
                  f"({report['wall_s']} s)", flush=True)
            return report

        if "single" in profiles:
            step("single", users=200, chats=100, group_size=2, rate=100, duration=duration, grace=10,
                 extra=("--closed-loop", "--connections", "1"))
        if "1:1" in profiles:
            for rate in one_rates:
                report = step("1:1", users=200, chats=100, group_size=2, rate=rate, duration=duration, grace=10)
                if not args.rates and saturated(report):
                    break
        if "saturated" in profiles:
            # --rate only sizes the receiver processes here: the senders do not wait for it.
            step("saturated", users=200, chats=100, group_size=2, rate=1000, duration=duration, grace=20,
                 extra=("--closed-loop", "--connections", str(SATURATED_SENDERS)))
        if "group" in profiles:
            for rate in group_rates:
                if behind(step("group", users=100, chats=1, group_size=100, rate=rate, duration=duration, grace=20,
                               extra=("--receiver", args.group_receiver))):
                    break
        if "idle" in profiles:
            step("idle", users=idle_phones, chats=50, group_size=2, rate=100, duration=duration, grace=10)
        if "presence-burst" in profiles:
            # The same 200 users and chats as 1:1; the burst's users come after them.
            report = step("presence-burst", users=200, chats=100, group_size=2, rate=BURST_RATE,
                          duration=burst_duration, grace=10,
                          extra=("--settle", "0", "--burst-phones", str(args.burst_phones),
                                 "--burst-at", str(burst_at), "--burst-window", str(burst_window)))
            b = report["burst"]
            print(f"  presence-burst: receipt p99 {b['without_ms']['p99']} ms before, "
                  f"{b['during_ms']['p99']} ms during the burst: ratio {b['p99_ratio']}", flush=True)
            # The control: the same burst with the presence worker stopped (SIGSTOP), so
            # that what the burst itself costs (1,000 connections to the broker and in the
            # load generator, on the same cores) is told apart from applying presence.
            stack.pause("presence")
            try:
                control = step("presence-burst, presence stopped", users=200, chats=100, group_size=2,
                               rate=BURST_RATE, duration=burst_duration, grace=10,
                               extra=("--settle", "0", "--burst-phones", str(args.burst_phones),
                                      "--burst-at", str(burst_at), "--burst-window", str(burst_window),
                                      "--user-prefix", "control"))
            finally:
                stack.resume("presence")
            report["burst"]["control_during_ms"] = control["burst"]["during_ms"]
        if "push" in profiles:
            push_duration = 8.0 if args.quick else 20.0
            common = dict(users=PUSH_USERS, chats=PUSH_USERS // 2, group_size=2, rate=PUSH_RATE,
                          duration=push_duration)
            off = step("push, push off", grace=2, extra=("--offline", "--user-prefix", "push-off"), **common)
            with FcmSink() as sink, BenchStack(push_sink=sink, fast_db=stack.fast_db,
                                               broker=stack.broker_kind) as push_stack:
                print(f"push stack up at {push_stack.url}, FCM stand-in at {sink.url}", flush=True)
                on = step("push", on=push_stack, grace=20,
                          extra=("--push-sink", sink.url, "--user-prefix", "push"), **common)
            on["push"]["post_p99_off_ms"] = off["post_ms"]["p99"]
            p = on["push"]
            print(f"  push: {p['received']} of {p['expected']} pushes, {p['per_s']}/s, latency p50 "
                  f"{p['latency_ms']['p50']} ms p99 {p['latency_ms']['p99']} ms; POST p99 "
                  f"{on['post_ms']['p99']} ms push on, {off['post_ms']['p99']} ms push off", flush=True)

    for fast_db in [False, True] if args.fast_db else [False]:
        mark = " [fast-db]" if fast_db else ""
        with BenchStack(fast_db=fast_db, broker=args.broker, cluster=args.cluster) as stack, \
                tempfile.TemporaryDirectory(prefix="chat-bench-home-") as home:
            print(f"stack up at {stack.url} ({stack.workdir}): {stack.describe()['database']}; "
                  f"{stack.describe()['broker']}", flush=True)
            run_profiles(stack, Path(home), mark)
            described["fast-db" if fast_db else "shipped"] = {
                **stack.describe(), **({"group phones": args.group_receiver} if "group" in profiles else {})}
            if args.cluster:
                # Graceful: its clients are disconnected (a crash would leave them to
                # their keepalive); the next step's phones connect to the other two.
                stack.stop_node(DOWN_NODE)
                print(f"{DOWN_NODE} stopped; its phones go to the others", flush=True)
                run_profiles(stack, Path(home), f"{mark} [{DOWN_NODE} down]", profiles - {"push"})

    table = render(rows)
    bursts = [render_burst(r) for r in reports if "burst" in r and r["kind"] == "presence-burst"]
    if bursts:
        table += "\n\n" + "\n\n".join(bursts)
    table += "\n\n" + render_cpu(reports)
    table += "\n\n" + render_rss(reports)
    pushes = [render_push(r) for r in reports if "push" in r]
    if pushes:
        table += "\n\n" + "\n\n".join(pushes)
    broker = args.broker + (", 3-node cluster" if args.cluster else "")
    title = (f"chat backend bench, {started:%Y-%m-%d %H:%M} UTC, {machine()['cpus']} cores, "
             f"{duration:g} s per step, broker {broker}")
    header = "\n".join(f"{name}: {json.dumps(d)}" for name, d in described.items())
    if args.fast_db:
        header += "\nrows marked [fast-db] ran on the fast-db stack, NOT the shipped configuration"
    text = f"{title}\n{header}\n\n{table}\n"
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.txt").write_text(text)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(
        {"started": started.isoformat(), "machine": machine(), "broker": broker, "stack": described["shipped"],
         **({"stack_fast_db": described["fast-db"]} if "fast-db" in described else {}), "duration_s": duration,
         "rows": rows, "reports": reports}, indent=1) + "\n")
    print(f"saved bench/results/{stamp}.txt and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
