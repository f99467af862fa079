"""scripts/chaos: the fault suite. Each scenario gets a fresh cluster
(chaos_cluster.Cluster) with users connected and messages flowing, injects
its fault `repeat` times from outside the processes, then stops the load
generator and checks what must hold. Writes target/chaos/report.json and
prints a table.

Usage: chaos.py --bin DIR --tansu PATH --out DIR [--quick] [--only NAME,...]
"""

import asyncio
from http.client import HTTPConnection
import json
import os
import random
import select
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from chaos_cluster import (  # noqa: E402
    ADMIN_TOKEN, DEAD_AFTER_MS, LEASE_TTL_MS, NODES, Cluster, Resp, binaries, free_port, harness_parser, http,
    metrics, now_ms, wait_for, wait_live)
from chaos_ws import Closed, WsSession  # noqa: E402

# name: (full repeats, users, messages/s, description)
SCENARIOS = {
    "leader-sigstop": (50, 300, 100, "leader SIGSTOP past its lease TTL, then SIGCONT"),
    "leader-sigkill": (20, 300, 100, "leader SIGKILL (restarted after the failover)"),
    "redis-stall": (5, 300, 100, "Redis DEBUG SLEEP 3.5"),
    "redis-restart": (3, 300, 100, "Redis restart with data loss"),
    "node-sigkill": (5, 300, 100, "socket node SIGKILL mid-flow (restarted after)"),
    "node-cutoff": (3, 300, 100, "one node cut off from Redis for 20 s (TCP proxy black hole)"),
    "broker-restart": (3, 300, 100, "broker restart as clients see it: every Kafka connection reset, refused 10 s"),
    "half-open": (3, 300, 100, "half-open clients (load generator SIGSTOP) during a rebalance"),
    "connect-race": (20, 150, 50, "200 connects racing a partition move"),
    "js-client": (3, 100, 50, "50 TypeScript rtc-client users (Node) chatting through a node drain, then a node SIGKILL"),
    "browser": (1, 100, 50, "the chat demo and the console in chromium: a drain and a reload of the recipient's page"),
    "bad-input": (10_000, 50, 20, "malformed, oversized and random frames, tokens, JWTs, heartbeats, decisions, gRPC"),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] chaos: {msg}", file=sys.stderr, flush=True)


class Checks:
    def __init__(self):
        self.items = []

    def check(self, ok, what):
        self.items.append({"ok": bool(ok), "what": what})
        log(("ok   " if ok else "FAIL ") + what)


# --- write audit --------------------------------------------------------


def audit_writes(cluster, since_ts=0.0):
    """Every assignment and decision write Redis executed, checked against
    the lease history MONITOR saw: a write carrying a leader epoch below
    the newest lease is a write from a deposed leader. Also: assignment
    epochs only go forward. Returns (deposed, backwards, assignments,
    writes audited)."""
    lease_key = cluster.prefix + "lb:leader"
    watched = {cluster.prefix + "assignment": "assignment", cluster.prefix + "scale:decision": "decision"}
    lease_epoch, last_epoch = 0, 0
    deposed, backwards, assignments, audited = [], [], [], 0
    for ts, args in cluster.monitor_history():
        if args[0].upper() != "SET" or len(args) < 3:
            continue
        key, value = args[1], args[2]
        if key == lease_key:
            try:
                lease_epoch = max(lease_epoch, int(json.loads(value)["epoch"]))
            except (ValueError, KeyError):
                pass
            continue
        kind = watched.get(key)
        if kind is None:
            continue
        try:
            doc = json.loads(value)
        except ValueError:
            continue  # the bad-input scenario writes garbage decisions itself
        if not isinstance(doc, dict) or "leader_epoch" not in doc:
            continue
        audited += 1
        if doc["leader_epoch"] < lease_epoch:
            deposed.append({"kind": kind, "leader_epoch": doc["leader_epoch"], "lease_epoch": lease_epoch, "ts": ts})
        if kind == "assignment":
            if doc["epoch"] < last_epoch:
                backwards.append({"epoch": doc["epoch"], "after": last_epoch, "ts": ts})
            last_epoch = max(last_epoch, doc["epoch"])
            if ts >= since_ts:
                assignments.append((ts, doc))
    return deposed, backwards, assignments, audited


# --- scenarios ----------------------------------------------------------


def wait_new_leader(cluster, old_holder, timeout=30):
    """Seconds until a replica other than `old_holder` holds the lease."""
    t0 = time.time()
    wait_for("a new leader", timeout, lambda: (cluster.lease() or {}).get("holder") not in (None, old_holder), 0.02)
    return time.time() - t0


def current_leader(c):
    """The load balancer that holds the lease (waiting for one)."""
    wait_for("a leader", 10, lambda: c.leader()[0] is not None)
    return c.leader()[0]


def leader_sigstop(c, repeats, checks, fig):
    failovers = []
    for r in range(repeats):
        lb = current_leader(c)
        lb.signal(signal.SIGSTOP)
        failovers.append(wait_new_leader(c, lb.name))
        time.sleep(0.3)
        lb.signal(signal.SIGCONT)
        # The resumed ex-leader still thinks it leads until it renews: every
        # write it tries now must be fenced.
        time.sleep(1.5)
    deposed, _, _, audited = audit_writes(c)
    fig["failover_max_s"] = round(max(failovers), 2)
    fig["writes_audited"] = audited
    fig["deposed_writes"] = len(deposed)
    checks.check(audited > 0, f"writes were audited: {audited}")
    checks.check(not deposed, f"no assignment or decision written from a deposed epoch ({len(deposed)} found)")
    fig["kubernetes_patches"] = "not run: no API server here; the fake-API-server test covers the lease check"


def leader_sigkill(c, repeats, checks, fig):
    failovers = []
    for r in range(repeats):
        lb = current_leader(c)
        lb.kill()
        failovers.append(wait_new_leader(c, lb.name))
        c.restart(lb)
        wait_live(lb)
        time.sleep(0.5)
    fig["failover_max_s"] = round(max(failovers), 2)
    fig["failover_p50_s"] = round(sorted(failovers)[len(failovers) // 2], 2)
    bound = LEASE_TTL_MS / 1000 + 1
    checks.check(max(failovers) <= bound, f"failover <= TTL + 1 s = {bound} s (max {max(failovers):.2f} s)")


def redis_stall(c, repeats, checks, fig):
    start_ts = time.time()
    reconnects_before = c.timeline()[-1]["reconnects_total"]
    for r in range(repeats):
        sleeper = Resp(c.redis_port, timeout=15)
        sleeper.call("DEBUG", "SLEEP", "3.5")
        sleeper.close()
        # Longer than the dead-after time plus the margin: a node taken for
        # dead would have been dropped by now.
        time.sleep(DEAD_AFTER_MS / 1000 + 2)
    _, _, assignments, _ = audit_writes(c, since_ts=start_ts)
    short = [doc["epoch"] for _, doc in assignments if sum(n["state"] == "ready" for n in doc["nodes"]) < NODES]
    fig["assignments_written"] = len(assignments)
    fig["short_assignments"] = len(short)
    checks.check(not short, f"no assignment with fewer ready nodes than the {NODES} alive (short epochs: {short})")
    time.sleep(2)
    moved = c.timeline()[-1]["reconnects_total"] - reconnects_before
    fig["users_disconnected"] = moved
    checks.check(moved == 0, f"no user disconnected during the stalls ({moved} reconnects)")


def session_ok(c, user):
    """A new user gets a route and a welcome (a fresh token admitted by a
    node that reads its ownership from Redis)."""
    async def once():
        opened = await race_once(c, [user])
        for s in opened:
            s["session"].close()
        return bool(opened)

    return asyncio.run(once())


def redis_restart(c, repeats, checks, fig):
    recoveries, assignment_back = [], []
    for r in range(repeats):
        t0 = time.time()
        c.restart_redis()
        # From the kill: until a new user is routed and welcomed again.
        probe = iter(range(1_000_000))
        wait_for("a new session", 30, lambda: session_ok(c, f"probe-{r}-{next(probe)}"), 0.05)
        recoveries.append(time.time() - t0)
        wait_for("the assignment is back", 30, lambda: c.assignment() is not None, 0.05)
        assignment_back.append(time.time() - t0)
        wait_for("steady", 30, c.steady)
        c.recovered_after(now_ms() - 1000)
    _, backwards, _, audited = audit_writes(c)
    fig["writes_audited"] = audited
    fig["route_recovery_max_s"] = round(max(recoveries), 2)
    fig["assignment_back_max_s"] = round(max(assignment_back), 2)
    fig["epochs_backwards"] = len(backwards)
    checks.check(not backwards, f"assignment epochs never went backwards ({backwards[:3]})")
    bound = 2 * LEASE_TTL_MS / 1000
    checks.check(max(recoveries) <= bound,
                 f"new users routed and welcomed within 2 x TTL = {bound} s of the kill (max {max(recoveries):.2f} s)")
    checks.check(max(assignment_back) <= bound + 1,
                 f"the assignment was written again within 2 x TTL + 1 s (max {max(assignment_back):.2f} s)")


def node_sigkill(c, repeats, checks, fig):
    recoveries = []
    for r in range(repeats):
        node = c.nodes[r % NODES]
        t0 = now_ms()
        node.kill()
        rec = c.recovered_after(t0, timeout=60)
        recoveries.append(rec if rec is not None else float("inf"))
        node.start()
        wait_live(node)
        wait_for("steady", 30, c.steady)
        c.recovered_after(now_ms() - 500)
    fig["users_back_max_s"] = max(recoveries)
    fig["note"] = "users_back: from the kill until every user was online again (the load generator's 1 s timeline)"
    fig["_reconnect_bound_ms"] = DEAD_AFTER_MS + 1000


def node_cutoff(c, repeats, checks, fig):
    node = c.nodes[c.proxied_node]
    fences_before = metrics(node.admin).get("rtc_socket_fences_total", 0)
    for r in range(repeats):
        c.node_proxy.set_mode("blackhole")
        time.sleep(20)
        c.node_proxy.set_mode("pass")
        wait_for("steady", 30, c.steady)
        c.recovered_after(now_ms() - 500)
    fences = metrics(node.admin).get("rtc_socket_fences_total", 0) - fences_before
    fig["fences"] = fences
    checks.check(fences == repeats, f"the cut-off node fenced itself each time ({fences} of {repeats})")


def broker_restart(c, repeats, checks, fig):
    reconnects_before = c.timeline()[-1]["reconnects_total"]
    for r in range(repeats):
        c.kafka_proxy.set_mode("reset")
        time.sleep(10)
        c.kafka_proxy.set_mode("pass")
        time.sleep(8)
    # Sessions ride out a broker outage: delivery pauses, nobody moves.
    moved = c.timeline()[-1]["reconnects_total"] - reconnects_before
    fig["users_disconnected"] = moved
    checks.check(moved == 0, f"no user disconnected by the broker outages ({moved} reconnects)")


def half_open(c, repeats, checks, fig):
    for r in range(repeats):
        node = c.nodes[r % NODES]
        c.loadgen.signal(signal.SIGSTOP)
        status, _ = http("POST", f"http://{node.admin}/drain", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        checks.check(status in (200, 202), f"drain of {node.name} accepted ({status})")
        time.sleep(6)
        c.loadgen.signal(signal.SIGCONT)
        c.recovered_after(now_ms(), timeout=60)
        node.stop()
        node.start()
        wait_for("steady", 30, c.steady)
        c.recovered_after(now_ms() - 500)


async def race_once(c, users):
    """Routes and connects `users` at once; returns the sessions that
    opened, each with its node and partition."""

    async def one(user):
        lb = random.choice([lb for lb in c.lbs if lb.alive()])
        status, body = await asyncio.to_thread(http, "GET", f"http://{lb.listen}/v1/route?user={user}")
        if status != 200:
            return None
        route = json.loads(body)
        try:
            status, session = await WsSession.connect(f"{route['url']}?token={route['token']}")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return None  # the node went away meanwhile
        if status != 101:
            return None
        return {"session": session, "node": route["node_id"], "partition": route["partition"], "user": user}

    return [s for s in await asyncio.gather(*(one(u) for u in users)) if s]


async def zombies_after(c, opened, settle_s):
    """Sessions still open after `settle_s` on a node that no longer owns
    their partition."""

    async def drain(s):
        try:
            while True:
                await s["session"].recv(timeout=settle_s + 5)
        except (Closed, asyncio.TimeoutError):
            pass

    tasks = [asyncio.create_task(drain(s)) for s in opened]
    await asyncio.sleep(settle_s)
    a = c.assignment()
    owner = {p: a["nodes"][o]["id"] for p, o in enumerate(a["owners"]) if o is not None}
    zombies = [s for s in opened if not s["session"].closed and owner.get(s["partition"]) != s["node"]]
    for s in opened:
        s["session"].close()
    for t in tasks:
        t.cancel()
    return zombies


def connect_race(c, repeats, checks, fig):
    zombies, opened_total = 0, 0
    for r in range(repeats):
        node = c.nodes[r % NODES]

        async def run():
            users = [f"race-{r}-{i}" for i in range(200)]
            move = asyncio.create_task(asyncio.to_thread(node.stop))
            opened = await race_once(c, users)
            await move
            return opened, await zombies_after(c, opened, settle_s=5)

        opened, z = asyncio.run(run())
        opened_total += len(opened)
        zombies += len(z)
        node.start()
        wait_for("steady", 30, c.steady)
        # And again while the node takes its partitions back.
        opened, z = asyncio.run(zombies_and_race(c, r))
        opened_total += len(opened)
        zombies += len(z)
        c.recovered_after(now_ms() - 500)
    fig["sessions_opened"] = opened_total
    fig["zombie_sessions"] = zombies
    checks.check(opened_total >= 100 * repeats, f"sessions opened in the races: {opened_total}")
    checks.check(zombies == 0, f"no zombie session ({zombies} of {opened_total} opened)")


async def zombies_and_race(c, r):
    opened = await race_once(c, [f"race-{r}-back-{i}" for i in range(200)])
    return opened, await zombies_after(c, opened, settle_s=5)


def bad_input(c, repeats, checks, fig):
    n = repeats
    node, lb = c.nodes[0], c.lbs[0]
    before = {p.name: metrics(p.admin) for p in [node, lb, c.jwt, c.scaler] + c.lbs[1:]}
    rng = random.Random(7)

    def junk(k):
        return bytes(rng.randrange(256) for _ in range(rng.randrange(k)))

    # Connect tokens: random, truncated, re-signed garbage.
    conn = HTTPConnection(*node.listen.split(":"), timeout=5)
    for i in range(n):
        token = junk(120).hex() if i % 2 else "v1." + junk(60).hex() + "." + junk(40).hex()
        conn.request("GET", f"/ws?token={token}")
        conn.getresponse().read()
    # JWTs against the load balancer that requires them.
    conn = HTTPConnection(*c.jwt.listen.split(":"), timeout=5)
    for i in range(n):
        parts = ".".join(junk(40).hex() for _ in range(3))
        conn.request("GET", f"/v1/route?user=u{i}", headers={"Authorization": f"Bearer {parts}"})
        conn.getresponse().read()
    # Heartbeats: random JSON-ish payloads and wrong fields on the stream.
    r = Resp(c.redis_port)
    for i in range(n):
        payload = junk(200) if i % 3 == 0 else json.dumps({"v": 1, "node_id": f"x{i}", "seq": "nope"}).encode()
        r.call("XADD", c.prefix + "heartbeats", "*", "hb", payload)
    # Client frames: malformed, oversized, unknown and random, on sessions
    # of a real user (reopened whenever the node closes one).
    frames_sent = asyncio.run(send_bad_frames(c, n, rng))
    grpc_sent, grpc_errors = grpc_garbage(c, n, rng)
    # The scaler polls the decision key (every 250 ms): a live run reads a
    # hundredth as many; the fuzz target feeds the same parser 10 000s.
    decisions_sent = bad_decisions(c, max(n // 100, 10), r, rng)
    r.close()
    time.sleep(2)
    after = {p.name: metrics(p.admin) for p in [node, lb, c.jwt, c.scaler] + c.lbs[1:]}

    def delta(proc, prefix):
        return sum(v - before[proc].get(k, 0) for k, v in after[proc].items() if k.startswith(prefix))

    counted = {
        "tokens": delta(node.name, 'rtc_socket_refused_total{reason="bad_token"'),
        "jwts": delta("lb-jwt", 'rtc_lb_route_requests_total{outcome="unauthorized"'),
        "heartbeats": max(delta(p.name, "rtc_lb_invalid_heartbeats_total") for p in c.lbs),
        "frames": delta(node.name, "rtc_socket_invalid_frames_total"),
        "decisions": delta("keda-scaler", 'rtc_scaler_redis_reads_total{outcome="malformed"'),
        "grpc": delta("keda-scaler", "rtc_scaler_grpc_errors_total"),
    }
    sent = {"tokens": n, "jwts": n, "heartbeats": n, "frames": frames_sent, "decisions": decisions_sent,
            "grpc": grpc_errors}
    fig["grpc_requests"] = grpc_sent
    fig["sent"], fig["counted"] = sent, counted
    for what in sent:
        checks.check(counted[what] >= sent[what], f"bad {what}: {sent[what]} sent, {counted[what]:.0f} counted")
    alive = [p.name for p in c.procs if p.name != "loadgen" and not p.alive()]
    checks.check(not alive, f"every server still runs ({alive or 'all up'})")


async def send_bad_frames(c, n, rng):
    node = c.nodes[0]
    user = next(f"bad-{i}" for i in range(10_000) if route_node(c, f"bad-{i}") == node.node_id)
    kinds = [
        lambda: b"{not json",
        lambda: json.dumps({"type": "nope", "x": 1}).encode(),
        lambda: json.dumps({"type": "send"}).encode(),
        lambda: json.dumps({"type": "send", "to": "u" * 500, "body": "x", "client_msg_id": "c"}).encode(),
        lambda: b"[" * 300 + b"]" * 300,
        lambda: bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200))),
        lambda: json.dumps({"type": "send", "to": "a", "body": "x" * 70_000, "client_msg_id": "big"}).encode(),
    ]
    sent, session = 0, None
    while sent < n:
        if session is None or session.closed:
            status, body = await asyncio.to_thread(http, "GET", f"http://{c.lbs[0].listen}/v1/route?user={user}")
            route = json.loads(body)
            status, session = await WsSession.connect(f"{route['url']}?token={route['token']}")
            if status != 101:
                session = None
                await asyncio.sleep(0.2)
                continue
            await session.recv()  # welcome
        session.send_raw(kinds[sent % len(kinds)]())
        sent += 1
        if sent % 50 == 0:
            try:
                await session.writer.drain()
                # Read what came back so the node's writes never block.
                while True:
                    await session.recv(timeout=0.01)
            except asyncio.TimeoutError:
                pass
            except (Closed, ConnectionError):
                session.closed = True
    return sent


def route_node(c, user):
    status, body = http("GET", f"http://{c.lbs[0].listen}/v1/route?user={user}")
    return json.loads(body)["node_id"] if status == 200 else None


def grpc_garbage(c, n, rng):
    """n random request bodies to the scaler's RPCs (and an unknown one);
    returns (sent, answered with an error status)."""
    import grpc

    channel = grpc.insecure_channel(c.scaler.listen)
    methods = ["IsActive", "GetMetricSpec", "GetMetrics", "NoSuchMethod"]
    calls = [channel.unary_unary(f"/externalscaler.ExternalScaler/{m}") for m in methods]
    errors = 0
    for i in range(n):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        try:
            calls[i % len(calls)](body, timeout=2)
        except grpc.RpcError:
            errors += 1
    channel.close()
    return n, errors


def bad_decisions(c, n, r, rng):
    """n malformed decisions, each held for longer than the scaler's poll
    interval (250 ms). The load balancers are stopped meanwhile (SIGSTOP),
    or the leader would overwrite them."""
    bad = [b"{", b"[]", json.dumps({"v": 1, "desired_replicas": "many"}).encode(), b"\xff\xfe"]
    key = c.prefix + "scale:decision"
    everyone = c.lbs + [c.jwt]  # the JWT one shares the election too
    for lb in everyone:
        lb.signal(signal.SIGSTOP)
    try:
        for i in range(n):
            r.call("SET", key, bad[i % len(bad)] + bytes(rng.randrange(256) for _ in range(8)))
            time.sleep(0.4)
    finally:
        for lb in everyone:
            lb.signal(signal.SIGCONT)
    return n


JS_CHAT = os.path.join(os.path.dirname(__file__), "..", "..", "clients", "js", "test", "stack", "chat.mjs")


def js_client(c, repeats, checks, fig):
    """The TypeScript client on the real stack (clients/js/test/stack/chat.mjs):
    its users are told to move by a drain (back within 1 s) and lose their
    node to a SIGKILL (back within dead-after + 1 s, their unacknowledged
    sends going again), and no message is lost, doubled or reordered."""
    runs = []
    for r in range(repeats):
        drained, killed = c.nodes[r % NODES], c.nodes[(r + 1) % NODES]
        env = dict(os.environ, RTC_STACK_LBS=",".join(f"http://{lb.listen}" for lb in c.lbs), RTC_STACK_USERS="50",
                   RTC_STACK_SECONDS="16", RTC_STACK_KILLED=killed.node_id)
        with open(os.path.join(c.dir, f"js-chat-{r}.log"), "w") as err:
            chat = subprocess.Popen(["node", "--experimental-websocket", JS_CHAT], stdout=subprocess.PIPE,
                                    stderr=err, text=True, env=env)
            try:
                ready, _, _ = select.select([chat.stdout], [], [], 60)
                line = chat.stdout.readline().strip() if ready else ""
                checks.check(line == "ready", f"run {r}: 50 users connected ({line or 'timed out'})")
                time.sleep(4)
                status, _ = http("POST", f"http://{drained.admin}/drain", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
                checks.check(status in (200, 202), f"run {r}: drain of {drained.name} accepted ({status})")
                time.sleep(4)
                killed.kill()
                out, _ = chat.communicate(timeout=120)
            finally:
                if chat.poll() is None:
                    chat.kill()
        report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        runs.append(report)
        log(f"js-client run {r}: {report}")
        checks.check(report.get("acked", 0) > 0, f"run {r}: sends acknowledged: {report.get('acked')}")
        for what in ("lost", "duplicates", "disorder", "failure_count"):
            checks.check(report.get(what) == 0, f"run {r}: {what}: {report.get(what)} {report.get('failures', [])[:3]}")
        checks.check(report.get("moves", 0) > 0 and (report.get("move_p99_ms") or 0) <= 1000,
                     f"run {r}: told to move, back within 1 s: p99 {report.get('move_p99_ms')} ms "
                     f"over {report.get('moves')} moves")
        checks.check(report.get("crashes", 0) > 0 and (report.get("crash_max_ms") or 0) <= DEAD_AFTER_MS + 1000,
                     f"run {r}: node SIGKILLed, back within dead-after + 1 s: max {report.get('crash_max_ms')} ms "
                     f"over {report.get('crashes')} users")
        # Both nodes come back for the next run (a drained node stays drained).
        killed.start()
        c.restart(drained)
        wait_live(killed)
        wait_live(drained)
        wait_for("steady", 30, c.steady)
        c.recovered_after(now_ms() - 500)
    for key in ("acked", "moves", "crashes", "resends", "duplicates_dropped"):
        fig[f"js_{key}"] = sum(run.get(key) or 0 for run in runs)
    fig["js_move_p99_ms_max"] = max((run.get("move_p99_ms") or 0) for run in runs)
    fig["js_crash_max_ms"] = max((run.get("crash_max_ms") or 0) for run in runs)
    fig["_reconnect_bound_ms"] = DEAD_AFTER_MS + 1000


JS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "clients", "js")


def browser(c, repeats, checks, fig):
    """clients/js/test/browser/chat.browser.mjs in Debian's chromium (it
    prints its checks): the page is served from the origin the load
    balancers allow."""
    out = os.path.join(c.dir, "screenshots")
    web = c._proc("web", ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", JS_DIR,
                          c.cors_origin.rsplit(":", 1)[1]]).start()
    wait_for("the web server", 10, lambda: http("GET", f"{c.cors_origin}/demo/")[0] == 200)
    env = dict(os.environ, RTC_WEB_URL=c.cors_origin, RTC_STACK_LBS=",".join(f"http://{lb.listen}" for lb in c.lbs),
               RTC_STACK_NODES=json.dumps([{"id": n.node_id, "admin": n.admin} for n in c.nodes]),
               RTC_STACK_ADMIN_TOKEN=ADMIN_TOKEN, RTC_LB_ADMIN=c.lbs[0].admin, RTC_BROWSER_OUT=out)
    with open(os.path.join(c.dir, "browser.log"), "w") as err:
        done = subprocess.run(["node", os.path.join(JS_DIR, "test", "browser", "chat.browser.mjs")], env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True, timeout=180)
    web.stop()
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {"checks": [{"ok": False, "what": f"no report (exit {done.returncode})"}]}
    for item in report["checks"]:
        checks.check(item["ok"], f"browser: {item['what']}")
    fig["screenshots"] = out


RUNNERS = {
    "leader-sigstop": leader_sigstop,
    "leader-sigkill": leader_sigkill,
    "redis-stall": redis_stall,
    "redis-restart": redis_restart,
    "node-sigkill": node_sigkill,
    "node-cutoff": node_cutoff,
    "broker-restart": broker_restart,
    "half-open": half_open,
    "connect-race": connect_race,
    "js-client": js_client,
    "browser": browser,
    "bad-input": bad_input,
}


def run_scenario(name, args, bins):
    full, users, rate, description = SCENARIOS[name]
    repeats = 1 if args.quick else full
    if name == "bad-input" and args.quick:
        repeats = 1000
    log(f"{name}: {description} x {repeats}")
    cluster = Cluster(name, bins, args.tansu, args.out, users, rate,
                      proxied_node=2 if name == "node-cutoff" else None, jwt_lb=name == "bad-input",
                      cors_origin=f"http://127.0.0.1:{free_port()}" if name == "browser" else None)
    checks, fig = Checks(), {}
    started = time.time()
    try:
        cluster.start(seconds=3600, scaler=name == "bad-input")
        RUNNERS[name](cluster, repeats, checks, fig)
        report = cluster.stop_loadgen()
        double = cluster.double_fetches()
        overlap_bound = cluster.handoff_overlap_bound_ms()
        spans = sum(len(v) for v in cluster.fetch_intervals().values())
    finally:
        cluster.stop()
    panics = cluster.panics()
    rec_bound = fig.pop("_reconnect_bound_ms", None)
    figures = {
        "repeats": repeats,
        "messages_sent": report["messages_sent"],
        "messages_delivered": report["messages_delivered"],
        "messages_lost": report["messages_lost"],
        "duplicates_delivered": report["duplicate_deliveries"],
        "double_sessions": report["double_sessions"],
        "order_violations": report["order_violations"],
        "route_errors": report["route_errors_total"],
        "reconnects": report["reconnects"],
        "reconnect_p99_ms": report["reconnect_p99_ms"],
        "reconnect_max_ms": report["reconnect_max_ms"],
        "gave_up": report["gave_up"],
        "fetch_spans": spans,
        "double_fetch_max_ms": max((d[3] for d in double), default=0),
        "panics": len(panics),
        "seconds": round(time.time() - started, 1),
        **fig,
    }
    checks.check(report["messages_lost"] == 0, f"messages lost: {report['messages_lost']}")
    checks.check(report["duplicate_deliveries"] == 0, f"duplicates past dedupe: {report['duplicate_deliveries']}")
    checks.check(report["double_sessions"] == 0, f"double sessions: {report['double_sessions']}")
    checks.check(report["order_violations"] == 0, f"order violations: {report['order_violations']}")
    checks.check(report["gave_up"] == 0, f"users who gave up: {report['gave_up']}")
    checks.check(report["messages_delivered"] > 0, f"messages delivered: {report['messages_delivered']}")
    # Two nodes fetch a partition at once only while its users move out of
    # the old owner: a node fenced or cut off stops at once.
    beyond = [d for d in double if d[3] > overlap_bound]
    checks.check(not beyond, f"no partition fetched by two nodes at once beyond a hand-off "
                             f"({overlap_bound} ms): {beyond[:3]}")
    checks.check(not panics, f"no panic in any log: {panics[:3]}")
    if rec_bound is not None:
        checks.check(report["reconnect_max_ms"] <= rec_bound,
                     f"users served elsewhere within dead-after + 1 s = {rec_bound} ms "
                     f"(reconnect max {report['reconnect_max_ms']} ms)")
    ok = all(c["ok"] for c in checks.items)
    return {"description": description, "ok": ok, "figures": figures, "checks": checks.items}


def table(results):
    cols = ["repeats", "messages_sent", "messages_delivered", "messages_lost", "duplicates_delivered",
            "double_sessions", "order_violations", "route_errors", "reconnect_max_ms", "seconds"]
    short = ["rep", "sent", "delivered", "lost", "dup", "dbl", "order", "routeerr", "recon max ms", "s"]
    lines = [f"{'scenario':16} {'ok':4} " + " ".join(f"{h:>12}" for h in short)]
    for name, r in results.items():
        f = r["figures"]
        lines.append(f"{name:16} {'yes' if r['ok'] else 'NO':4} " + " ".join(f"{f.get(k, ''):>12}" for k in cols))
    return "\n".join(lines)


def main():
    ap = harness_parser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    # SIGTERM unwinds like an error: every cluster's `finally` stops its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bins = binaries(args.bin)
    names = [n for n in SCENARIOS if not args.only or n in args.only.split(",")]
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in names:
        try:
            results[name] = run_scenario(name, args, bins)
        except Exception as e:  # a scenario that could not run is a failure, not a crash of the suite
            log(f"{name}: could not run: {e!r}")
            results[name] = {"description": SCENARIOS[name][3], "ok": False, "figures": {},
                             "checks": [{"ok": False, "what": f"scenario ran: {e!r}"}]}
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"quick": args.quick, "scenarios": results}, f, indent=2)
    print(table(results))
    failed = [n for n, r in results.items() if not r["ok"]]
    if failed:
        log(f"failed: {', '.join(failed)}")
        sys.exit(1)
    log("every scenario held")


if __name__ == "__main__":
    main()
