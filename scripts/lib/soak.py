"""The soak behind scripts/bench-soak: three socket nodes, two load
balancers, tansu, tens of thousands of sessions and a steady message rate
for many minutes, with one scale-out (a fourth node joins) and one drained
scale-in (a node is drained, then stopped) on the way.

It samples every node's RSS, CPU time and sessions, and the load
generators' per-second timelines (with each second's latencies). It writes
soak.json and soak.svg and checks the goals: RSS flat after warm-up (per
node, per steady segment), nothing lost, reconnect P99 within 1 s.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chaos_cluster import (  # noqa: E402
    ADMIN_TOKEN, TOPIC, Cluster, binaries, harness_parser, http, metrics, now_ms, proc_cpu_s,
    proc_rss_bytes, wait_for)
from demo_report import panel, read_jsonl  # noqa: E402

# Sessions per load generator process stay well under the 20 000 open files
# a process may have.
USERS_PER_LOADGEN = 15000


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] soak: {msg}", file=sys.stderr, flush=True)


class SoakCluster(Cluster):
    """The chaos cluster, with room for the fourth node and several load
    generators."""

    def _lb_argv(self, name, listen, admin, auth="none"):
        argv = super()._lb_argv(name, listen, admin, auth)
        # The scaling engine may count the fourth node in; nothing here acts
        # on its decisions (no actuator): the soak moves nodes itself.
        argv[argv.index("--max-replicas") + 1] = str(self.node_count + 1)
        return argv

    def start_mock_kafka(self):
        """librdkafka's mock cluster in a process of its own instead of
        tansu: what rtc does when the broker is not the limit."""
        p = self._proc("kafka-mock", [self.bins["rtc-bench"], "kafka", "--topic", TOPIC, "--partitions",
                                      str(self.partitions)]).start()

        def bootstrap():
            with open(p.log_path, errors="replace") as f:
                found = [line.strip() for line in f if re.match(r"^\d+\.\d+\.\d+\.\d+:\d+", line)]
            return found[0] if found else None

        wait_for("the mock cluster", 20, bootstrap, 0.2)
        self.brokers = bootstrap()

    def fill_mock(self, per_partition):
        """Fills every partition of the mock cluster with records for nobody,
        one per batch as the load generators' come, before any node starts
        (a node starts a partition never committed at its end). The mock
        finds a fetch's offset by walking the partition's batches from the
        oldest, and keeps 5 MB of them (rdkafka_mock.c): a full log makes
        its fetches cost from the first minute what they cost once the run
        has filled it, so a node's figures do not follow the broker's
        growing latency."""
        total = per_partition * self.partitions
        rate = 50_000
        log(f"filling the mock cluster: {total} records")
        subprocess.run([self.bins["rtc-bench"], "produce", "--brokers", self.brokers, "--topic", TOPIC,
                        "--partitions", str(self.partitions), "--rate", str(rate),
                        "--secs", str(math.ceil(total / rate)), "--users", "100000", "--user-prefix", "filler-",
                        "--batch-records", "1"],
                       check=True, timeout=total / rate * 3 + 120, stdout=subprocess.DEVNULL)

    def start_loadgens(self, ramp_s, seconds):
        count = max(1, math.ceil(self.users / USERS_PER_LOADGEN))
        self.loadgens = []
        for k in range(count):
            users = self.users // count + (1 if k < self.users % count else 0)
            ips = [f"127.0.{k + 1}.{i}" for i in range(2, 6)]
            p = self.loadgen_proc(f"loadgen-{k}", users, self.rate / count,
                                  f"ramp:{ramp_s}s:0->{users},plateau:{seconds}s:{users}", ips, f"soak{k}-")
            self.loadgens.append(p.start())

    def timelines(self):
        return [read_jsonl(Path(p.timeline_path)) for p in self.loadgens]

    def all_online(self):
        for p in self.loadgens:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited (code {p.popen.returncode}); see {p.log_path}")
        return all(t and t[-1]["users_online"] >= p.users and t[-1]["connecting"] == 0
                   for p, t in zip(self.loadgens, self.timelines()))

    def stop_loadgens(self):
        reports = []
        for p in self.loadgens:
            p.stop(timeout=120)
            with open(p.report_path) as f:
                reports.append(json.load(f))
        return reports


def proc_sample(pid):
    """(RSS bytes, CPU seconds) of a live process, or None."""
    try:
        return proc_rss_bytes(pid), proc_cpu_s(pid)
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def sample_nodes(cluster, t0):
    rows = []
    for node in cluster.nodes:
        if not node.alive():
            continue
        got = proc_sample(node.popen.pid)
        if got:
            m = metrics(node.admin)
            rows.append({"t_s": round(time.time() - t0, 1), "node": node.name, "rss_bytes": got[0],
                         "cpu_s": round(got[1], 2), "sessions": int(m.get("rtc_socket_connections", 0)),
                         "replayed": int(m.get("rtc_socket_messages_replayed_total", 0)),
                         # Replays (resume → resumed) so far, and those over 1 s.
                         "resumes": int(m.get("rtc_socket_resume_seconds_count", 0)),
                         "resumes_over_1s": int(m.get("rtc_socket_resume_seconds_count", 0)
                                                - m.get('rtc_socket_resume_seconds_bucket{le="1"}', 0))})
    return rows


def fit(points):
    """Least-squares slope of (x, y) and its standard error."""
    n = len(points)
    if n < 3:
        return 0.0, float("inf")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0, float("inf")
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
    return slope, math.sqrt(resid / (n - 2) / sxx)


def rss_segments(samples, segments):
    """Per node and steady segment: RSS slope (bytes/min), its standard
    error, the drift over the segment, and whether it is flat: the slope
    within two standard errors of 0 (noise), or a drift under 1 % of RSS."""
    out = []
    for name, (start, end) in segments.items():
        for node in sorted({s["node"] for s in samples}):
            pts = [(s["t_s"] / 60, s["rss_bytes"]) for s in samples if s["node"] == node and start <= s["t_s"] < end]
            if len(pts) < 3:
                continue
            slope, se = fit(pts)
            mean = sum(y for _, y in pts) / len(pts)
            drift = slope * (pts[-1][0] - pts[0][0])
            flat = abs(slope) <= 2 * se or abs(drift) < 0.01 * mean
            out.append({"segment": name, "node": node, "from_s": start, "to_s": end, "samples": len(pts),
                        "mean_rss_bytes": round(mean), "slope_bytes_per_min": round(slope),
                        "slope_se": round(se) if math.isfinite(se) else None, "drift_bytes": round(drift),
                        "flat": flat})
    return out


def quantile(hist, q):
    """Nearest-rank quantile of {ms: count}."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = max(1, math.ceil(total * q)), 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= rank:
            return ms
    return None


def merged(timelines, key, t0_ms, lo_s, hi_s):
    """{ms: count} of the timelines' `key` histograms (latency_ms,
    reconnect_ms) over [lo_s, hi_s) of the run, every load generator's
    merged."""
    hist = {}
    for lines in timelines:
        for line in lines:
            if t0_ms + lo_s * 1000 <= line["ts_ms"] < t0_ms + hi_s * 1000:
                for ms, n in line.get(key, {}).items():
                    hist[int(ms)] = hist.get(int(ms), 0) + n
    return hist


def summary(hist):
    return {"count": sum(hist.values()), "p50_ms": quantile(hist, 0.5), "p99_ms": quantile(hist, 0.99),
            "max_ms": max(hist) if hist else None}


def per_minute_latency(timelines, t0_ms, t_end_s):
    """Delivery P50/P99/max per minute of the run (the last one may be
    short)."""
    out = []
    for m in range(math.ceil(t_end_s / 60)):
        s = summary(merged(timelines, "latency_ms", t0_ms, m * 60, min((m + 1) * 60, t_end_s + 1)))
        if s["count"]:
            out.append({"minute": m, "delivered": s.pop("count"), **s})
    return out


def move_windows(ev, t_end_s):
    """Each move that happened, as (name, from its event, to the next)."""
    windows = [("scale-out", ev.get("scale-out"), ev.get("scale-in", t_end_s)),
               ("scale-in", ev.get("scale-in"), t_end_s + 1)]
    return [(name, lo, hi) for name, lo, hi in windows if lo is not None]


def reconnects_per_move(timelines, t0_ms, ev, t_end_s):
    """Reconnect times (disconnect → welcome) of each move."""
    return [{"move": name, **summary(merged(timelines, "reconnect_ms", t0_ms, lo, hi))}
            for name, lo, hi in move_windows(ev, t_end_s)]


def counted_per_move(samples, ev, t_end_s):
    """What the nodes counted during each move, summed over nodes: replays,
    those over 1 s, messages replayed."""
    keys = ("resumes", "resumes_over_1s", "replayed")
    out = []
    for name, lo, hi in move_windows(ev, t_end_s):
        row = {"move": name, **{k: 0 for k in keys}}
        for node in {s["node"] for s in samples}:
            mine = [s for s in samples if s["node"] == node]
            before = [s for s in mine if s["t_s"] <= lo]
            during = [s for s in mine if s["t_s"] < hi]
            if during:
                for k in keys:
                    row[k] += during[-1][k] - (before[-1][k] if before else 0)
        out.append(row)
    return out


def chart(path, samples, latency, events, t_end):
    nodes = sorted({s["node"] for s in samples})
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    rss = [(n, colors[i % len(colors)], [(s["t_s"], s["rss_bytes"] / 2**20) for s in samples if s["node"] == n], None)
           for i, n in enumerate(nodes)]
    sessions = [(n, colors[i % len(colors)], [(s["t_s"], s["sessions"]) for s in samples if s["node"] == n], None)
                for i, n in enumerate(nodes)]
    mid = lambda m: min(m * 60 + 30, t_end)  # noqa: E731
    p99 = [("P99", "#d62728", [(mid(m["minute"]), m["p99_ms"]) for m in latency if m["p99_ms"] is not None], None),
           ("P50", "#1f77b4", [(mid(m["minute"]), m["p50_ms"]) for m in latency if m["p50_ms"] is not None], "4 3")]
    marks = " · ".join(f"{e['what']} at {e['t_s']:.0f} s" for e in events)
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="900" height="700" font-family="sans-serif">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="70" y="20" font-size="13">rtc soak: {marks}</text>',
           panel("RSS per node (MiB)", rss, 30, 0, t_end),
           panel("sessions per node", sessions, 250, 0, t_end),
           panel("delivery latency per minute (ms)", p99, 470, 0, t_end),
           "</svg>"]
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def drain(cluster, node, timeout):
    status, _ = http("POST", f"http://{node.admin}/drain", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if status not in (200, 202):
        raise RuntimeError(f"drain of {node.name} refused ({status})")

    def drained():
        code, body = http("GET", f"http://{node.admin}/drain/status")
        return code == 200 and json.loads(body).get("drained") is True

    wait_for(f"{node.name} drained", timeout, drained, 0.5)
    node.stop()
    cluster.nodes.remove(node)
    cluster.node_count -= 1


def main():
    ap = harness_parser()
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--users", type=int, default=45000)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--ramp-secs", type=int, default=90)
    ap.add_argument("--sample-secs", type=float, default=10)
    # A node's RSS rose for about 6 minutes after its users arrived, in steps,
    # then held to the tenth of a MiB (20 minutes on the filled mock).
    ap.add_argument("--warmup-secs", type=float, default=360)
    ap.add_argument("--kafka", choices=["tansu", "mock"], default="tansu")
    # The product's default: a partition holds few enough users that the
    # block of one partition's users moving together is short.
    ap.add_argument("--partitions", type=int, default=360)
    ap.add_argument("--fill-mock", type=int, default=0, metavar="RECORDS",
                    help="records per partition written to the mock cluster before the nodes start")
    ap.add_argument("--smoke", action="store_true", help="checks the harness: few users, no RSS verdict")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bins = binaries(args.bin)
    os.makedirs(args.out, exist_ok=True)
    run_s = args.minutes * 60
    scale_out_at, scale_in_at = 0.4 * run_s, 0.7 * run_s
    # A node that gained users warms up again (their caches fill, maps grow):
    # a segment after a move starts a warm-up after it, as the first one does.
    warmup_s = min(args.warmup_secs, 0.2 * run_s)
    cluster = SoakCluster("soak", bins, args.tansu, args.out, args.users, args.rate, node_count=3,
                          partitions=args.partitions)
    samples, events = [], []
    try:
        cluster.start_redis()
        if args.kafka == "mock":
            cluster.start_mock_kafka()
            if args.fill_mock:
                cluster.fill_mock(args.fill_mock)
        else:
            cluster.start_kafka()
        cluster.lbs = [cluster.start_lb(0), cluster.start_lb(1)]
        cluster.nodes = [cluster.start_node(i) for i in range(3)]
        wait_for("every node owns partitions", 30, cluster.steady)
        log(f"{args.users} users, {args.rate:g} msg/s, {args.minutes:g} min after a {args.ramp_secs} s ramp")
        cluster.start_loadgens(args.ramp_secs, int(run_s) + 300)
        wait_for("every user online", args.ramp_secs + 180, cluster.all_online, 1)
        t0, t0_ms = time.time(), now_ms()
        events.append({"t_s": 0, "what": "all online"})
        log("every user online; the clock starts")
        next_sample = 0.0
        while (elapsed := time.time() - t0) < run_s:
            if elapsed >= next_sample:
                samples += sample_nodes(cluster, t0)
                next_sample += args.sample_secs
            if scale_out_at <= elapsed and not any(e["what"] == "scale-out" for e in events):
                log("scale-out, a fourth node joins")
                cluster.nodes.append(cluster.start_node(3))
                cluster.node_count = 4
                events.append({"t_s": round(time.time() - t0, 1), "what": "scale-out"})
                wait_for("the fourth node owns partitions", 60, cluster.steady, 0.5)
            if scale_in_at <= elapsed and not any(e["what"] == "scale-in" for e in events):
                log("drained scale-in of socket-0")
                events.append({"t_s": round(time.time() - t0, 1), "what": "scale-in"})
                drain(cluster, cluster.nodes[0], 120)
                events.append({"t_s": round(time.time() - t0, 1), "what": "socket-0 stopped"})
            time.sleep(0.5)
        t_end = round(time.time() - t0, 1)
        reports = cluster.stop_loadgens()
        timelines = cluster.timelines()
    finally:
        cluster.stop()
    panics = cluster.panics()

    ev = {e["what"]: e["t_s"] for e in events}
    segments = {"before scale-out": (warmup_s, ev.get("scale-out", t_end)),
                "after scale-out": (ev.get("scale-out", t_end) + warmup_s, ev.get("scale-in", t_end)),
                "after scale-in": (ev.get("socket-0 stopped", t_end) + warmup_s, t_end)}
    rss = rss_segments(samples, segments) if not args.smoke else []
    latency = per_minute_latency(timelines, t0_ms, t_end)
    reconnects = summary(merged(timelines, "reconnect_ms", t0_ms, 0, t_end + 1))
    moves = reconnects_per_move(timelines, t0_ms, ev, t_end)
    counted = counted_per_move(samples, ev, t_end)
    total = lambda k: sum(r[k] for r in reports)  # noqa: E731
    result = {
        "minutes": args.minutes, "users": args.users, "rate": args.rate, "kafka": args.kafka,
        "partitions": args.partitions,
        "mock_filled_per_partition": args.fill_mock, "smoke": args.smoke,
        "events": events, "seconds": t_end,
        "messages_sent": total("messages_sent"), "messages_delivered": total("messages_delivered"),
        "messages_lost": total("messages_lost"), "duplicates_delivered": total("duplicate_deliveries"),
        "double_sessions": total("double_sessions"), "order_violations": total("order_violations"),
        "reconnects": total("reconnects"),
        # Merged from the timelines: every load generator's reconnects in
        # one distribution, and each move's apart.
        "reconnect_p99_ms": reconnects["p99_ms"] or 0,
        "reconnect_max_ms": max(r["reconnect_max_ms"] for r in reports),
        "reconnects_per_move": moves, "counted_per_move": counted,
        "delivery_per_minute": latency, "rss_segments": rss, "samples": samples, "panics": panics,
    }
    goals = {
        "rss_flat_after_warmup": all(s["flat"] for s in rss) if rss else None,
        "none_lost": result["messages_lost"] == 0 and result["messages_delivered"] > 0,
        "reconnect_p99_within_1s": result["reconnect_p99_ms"] <= 1000,
        "scaled_out_and_in": "scale-out" in ev and "socket-0 stopped" in ev,
        "no_double_sessions": result["double_sessions"] == 0,
        "no_panics": not panics,
    }
    result["goals"] = goals
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    chart(os.path.join(args.out, "soak.svg"), samples, latency, events, t_end)

    print(f"soak ({args.kafka}, {args.partitions} partitions): {args.users} users, {args.rate:g} msg/s, {t_end / 60:.1f} min; events: "
          + ", ".join(f"{e['what']} {e['t_s']:.0f}s" for e in events))
    print(f"messages sent {result['messages_sent']}, delivered {result['messages_delivered']}, "
          f"lost {result['messages_lost']}, duplicates {result['duplicates_delivered']}, "
          f"double sessions {result['double_sessions']}")
    print(f"reconnects {result['reconnects']}: P99 {result['reconnect_p99_ms']} ms, "
          f"max {result['reconnect_max_ms']} ms")
    for m in moves:
        print(f"  {m['move']:9} {m['count']:6} reconnects: P50 {m['p50_ms']} ms, P99 {m['p99_ms']} ms, "
              f"max {m['max_ms']} ms")
    for c in counted:
        print(f"  {c['move']:9} replays {c['resumes']}, {c['resumes_over_1s']} over 1 s, "
              f"{c['replayed']} messages replayed")
    print("minute  delivered  p50 ms  p99 ms  max ms")
    for m in latency:
        print(f"{m['minute']:6} {m['delivered']:10} {m['p50_ms']!s:>7} {m['p99_ms']!s:>7} {m['max_ms']!s:>7}")
    for s in rss:
        print(f"{s['segment']:17} {s['node']:9} mean {s['mean_rss_bytes'] / 2**20:7.1f} MiB  "
              f"slope {s['slope_bytes_per_min'] / 1024:+8.1f} KiB/min (se {(s['slope_se'] or 0) / 1024:.1f})  "
              f"{'flat' if s['flat'] else 'GROWS'}")
    for goal, ok in goals.items():
        print(f"goal {goal}: {'-' if ok is None else 'yes' if ok else 'NO'}")
    failed = [g for g, ok in goals.items() if ok is False]
    if failed:
        log(f"goals not met: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
