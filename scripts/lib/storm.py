"""scripts/bench-client's reconnect storm: the TypeScript client against
the Rust one, on the same stack (chaos_cluster: Redis, tansu, two load
balancers, two socket nodes on loopback).

For each side in turn: N users connect and idle (the TypeScript ones in
PROCESSES Node processes); one node is drained, so about half of them are
told to move at once; after SETTLE seconds the side reports its reconnect
times, and its CPU time over those seconds is read from /proc. The drained
node is restarted between the sides.

Usage: storm.py --bin DIR --tansu PATH --out DIR --users N --settle S
"""

import json
import os
import select
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from chaos_cluster import (  # noqa: E402
    ADMIN_TOKEN, Cluster, binaries, harness_parser, http, proc_cpu_s, proc_rss_bytes, wait_for, wait_live)

STORM_JS = os.path.join(os.path.dirname(__file__), "..", "..", "clients", "js", "bench", "storm.mjs")
NODES = 2
PROCESSES = 2


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] storm: {msg}", file=sys.stderr, flush=True)


def cpu_ms(pid):
    return int(proc_cpu_s(pid) * 1000)


def drain_and_settle(c, pids, victim, settle):
    """Drains `victim`; the CPU time `pids` spent in the next `settle` seconds."""
    before = sum(cpu_ms(p) for p in pids)
    status, _ = http("POST", f"http://{victim.admin}/drain", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if status not in (200, 202):
        raise RuntimeError(f"drain of {victim.name}: {status}")
    time.sleep(settle)
    return sum(cpu_ms(p) for p in pids) - before


def node_side(c, users, settle, victim):
    procs = []
    try:
        for i in range(PROCESSES):
            env = dict(os.environ, RTC_STACK_LBS=",".join(f"http://{lb.listen}" for lb in c.lbs),
                       RTC_STORM_USERS=str(users // PROCESSES), RTC_STORM_PREFIX=f"storm-js-{os.getpid()}-{i}")
            with open(os.path.join(c.dir, f"storm-js-{i}.log"), "w") as err:
                # RTC_STORM_NODE_FLAGS: e.g. --cpu-prof, to see where a reconnect's CPU goes.
                flags = os.environ.get("RTC_STORM_NODE_FLAGS", "").split()
                procs.append(subprocess.Popen(["node", "--experimental-websocket", *flags, STORM_JS], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=err, text=True, env=env))
        for p in procs:
            ready, _, _ = select.select([p.stdout], [], [], 180)
            if not ready or p.stdout.readline().strip() != "ready":
                raise RuntimeError("the Node clients did not all connect")
        cpu = drain_and_settle(c, [p.pid for p in procs], victim, settle)
        for p in procs:
            p.stdin.write("report\n")
            p.stdin.flush()
        reports = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # The processes' own percentiles cannot be merged: take the worst.
    return {"reconnects": sum(r["reconnects"] for r in reports),
            "reconnect_p50_ms": max(r["reconnect_p50_ms"] or 0 for r in reports),
            "reconnect_p99_ms": max(r["reconnect_p99_ms"] or 0 for r in reports),
            "reconnect_max_ms": max(r["reconnect_max_ms"] or 0 for r in reports),
            "not_connected": sum(r["not_connected"] for r in reports),
            "rss_mb": sum(r["rss_mb"] for r in reports), "cpu_ms": cpu,
            "messages": sum(r["acked"] for r in reports), "lost": sum(r["lost"] for r in reports),
            "send_failures": sum(r["send_failures"] for r in reports),
            "not_recovered": sum(r["not_recovered"] for r in reports),
            "route_p99_ms": max(r["route_p99_ms"] or 0 for r in reports),
            "socket_p99_ms": max(r["socket_p99_ms"] or 0 for r in reports),
            "detail": [r["lost_detail"] + r["not_recovered_reasons"] for r in reports]}


def rust_side(c, users, settle, victim):
    # The same traffic as the TypeScript side: each user gets a message every 10 s.
    c.users, c.rate = users, users / 10
    c.start_loadgen(seconds=3600)
    wait_for("every loadgen user online", 180, c.all_online, 0.5)
    cpu = drain_and_settle(c, [c.loadgen.popen.pid], victim, settle)
    rss = proc_rss_bytes(c.loadgen.popen.pid) // 2**20
    r = c.stop_loadgen()
    return {"reconnects": r["reconnects"], "reconnect_p50_ms": r.get("reconnect_p50_ms"),
            "reconnect_p99_ms": r["reconnect_p99_ms"], "reconnect_max_ms": r["reconnect_max_ms"],
            "not_connected": r.get("gave_up", 0), "rss_mb": rss, "cpu_ms": cpu,
            "messages": r["messages_delivered"], "lost": r["messages_lost"], "send_failures": 0}


def main():
    ap = harness_parser()
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--settle", type=float, default=10)
    args = ap.parse_args()
    bins = binaries(args.bin)
    c = Cluster("storm", bins, args.tansu, args.out, args.users, 0, node_count=NODES)
    results = {}
    try:
        c.start_redis()
        c.start_kafka()
        c.lbs = [c.start_lb(0), c.start_lb(1)]
        c.nodes = [c.start_node(i) for i in range(NODES)]
        wait_for("every node owns partitions", 30, c.steady)
        for i, (name, side) in enumerate([("rtc-client (TypeScript, Node)", node_side), ("rtc-client (Rust, loadgen)", rust_side)]):
            victim = c.nodes[i % NODES]
            log(f"{name}: {args.users} users, then {victim.name} drains")
            results[name] = side(c, args.users, args.settle, victim)
            log(f"{name}: {results[name]}")
            c.restart(victim)
            wait_live(victim)
            wait_for("steady", 60, c.steady)
    finally:
        c.stop()
    ts, rust = results.values()
    ratio = lambda k: round(ts[k] / rust[k], 2) if ts.get(k) and rust.get(k) else None  # noqa: E731
    report = {"users": args.users, "settle_s": args.settle, "sides": results,
              "ratio_ts_to_rust": {k: ratio(k) for k in ("reconnect_p50_ms", "reconnect_p99_ms", "cpu_ms", "rss_mb")}}
    with open(os.path.join(args.out, "storm.json"), "w") as f:
        json.dump(report, f, indent=2)
    keys = ["reconnects", "reconnect_p50_ms", "reconnect_p99_ms", "reconnect_max_ms", "not_connected", "cpu_ms", "rss_mb",
            "messages", "lost"]
    print(f"{'side':32} " + " ".join(f"{k:>17}" for k in keys))
    for name, r in results.items():
        print(f"{name:32} " + " ".join(f"{str(r.get(k)):>17}" for k in keys))
    print(f"{'TypeScript / Rust':32} " + " ".join(f"{str(ratio(k) or ''):>17}" for k in keys))
    bad = [n for n, r in results.items() if not r["reconnects"] or r["not_connected"] or r["lost"] or r["send_failures"]]
    if bad:
        log(f"no reconnects measured, users left unconnected, or messages lost or failed: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
