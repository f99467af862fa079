"""The processes of one chaos scenario, and the tools that hurt them.

A `Cluster` is Redis, tansu (a real Kafka-protocol broker), two load
balancers, three socket nodes, the KEDA scaler and the load generator, all
on loopback. Faults come from outside the processes: signals, a TCP proxy
that black-holes or resets connections, Redis `DEBUG SLEEP` and restarts.
`RedisMonitor` records every write Redis executes (MONITOR shows the
commands run inside Lua scripts too), so writes can be audited afterwards.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from demo_report import read_jsonl

NODES = 3
PARTITIONS = 24
TOPIC = "rtc.chaos"
ADMIN_TOKEN = "chaos-admin-token"
# Production liveness (1 s heartbeats, dead after 6 s, fence margin 0.5 s):
# the Redis stall of 3.5 s must not fence a node. The lease is short so the
# failover scenarios run quickly.
LEASE_TTL_MS = 2000
HEARTBEAT_MS = 1000
DEAD_AFTER_MS = 6000
# Passed to every node (--handoff-timeout-ms, --handoff-rate): the chaos
# check's bound on a hand-off's double fetch is computed from them.
HANDOFF_TIMEOUT_MS = 3000
HANDOFF_RATE = 1000


_TAKEN = set()


def harness_parser():
    """The arguments every harness on a `Cluster` takes: where the binaries,
    tansu and the output go."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tansu", required=True)
    ap.add_argument("--out", required=True)
    return ap


def binaries(bin_dir):
    """Paths of the binaries a `Cluster` runs."""
    return {b: os.path.join(bin_dir, b) for b in ["socket", "load-balancer", "keda-scaler", "loadgen", "rtc-bench"]}


def free_port():
    """A port below the kernel's ephemeral range (32768+), where the many
    outgoing connections of a run cannot take it between this check and
    the server's bind, nor while a restarted server binds it again."""
    import random

    while True:
        port = random.randrange(20000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port


def now_ms():
    return int(time.time() * 1000)


def http(method, url, headers=None, body=None, timeout=3.0):
    """(status, body text); status 0 when nothing answered."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return 0, ""


def metrics(admin):
    """Prometheus samples of one admin port: {'name{labels}': value}."""
    status, text = http("GET", f"http://{admin}/metrics")
    out = {}
    if status != 200:
        return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                pass
    return out


def proc_rss_bytes(pid):
    """Resident memory of a live process (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def proc_cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_live(p, timeout=20):
    """Waits for `p`'s admin /livez; fails at once if it exited."""

    def live():
        if not p.alive():
            raise RuntimeError(f"{p.name} exited (code {p.popen.returncode}); see {p.log_path}")
        return http("GET", f"http://{p.admin}/livez")[0] == 200

    wait_for(p.name, timeout, live)


def wait_for(what, timeout, check, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


class Proc:
    """A child process with its log file."""

    def __init__(self, name, argv, log_dir, env=None):
        self.name, self.argv, self.log_dir, self.env = name, argv, log_dir, env
        self.popen = None
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.killed_at_ms = []

    def start(self):
        log = open(self.log_path, "ab")
        env = dict(os.environ, **(self.env or {}))
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            if sig == signal.SIGKILL:
                self.killed_at_ms.append(now_ms())
            self.popen.send_signal(sig)

    def stop(self, timeout=15):
        if not self.alive():
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            rc = self.popen.wait()
        # Whatever it still fetched ends here at the latest.
        self.killed_at_ms.append(now_ms())
        return rc

    def kill(self):
        self.signal(signal.SIGKILL)
        if self.popen:
            self.popen.wait()


class Resp:
    """A minimal Redis client (RESP2), enough for the faults and reads."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}


def _unescape(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "x" and i + 3 < len(s):
                out.append(chr(int(s[i + 2 : i + 4], 16)))
                i += 4
                continue
            out.append(_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class RedisMonitor:
    """Every command Redis runs, in order, from `redis-cli MONITOR`
    (restarted with Redis): [(unix seconds, [args...])]."""

    def __init__(self, port):
        self.port = port
        self.commands = []
        self._lock = threading.Lock()
        self._proc = None
        self._thread = None

    def start(self):
        self._proc = subprocess.Popen(
            ["redis-cli", "-p", str(self.port), "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._thread = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._thread.start()
        wait_for("redis MONITOR", 5, lambda: self._proc.poll() is None, 0.05)
        time.sleep(0.2)

    def _read(self, proc):
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            head, _, rest = line.partition(" ")
            try:
                ts = float(head)
            except ValueError:
                continue
            args = [_unescape(m) for m in _QUOTED.findall(rest)]
            if args and args[0].upper() in ("SET", "DEL", "FLUSHALL", "FLUSHDB"):
                with self._lock:
                    self.commands.append((ts, args))

    def stop(self):
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait()

    def snapshot(self):
        with self._lock:
            return list(self.commands)


class Proxy:
    """A TCP proxy on loopback in a thread of its own. Modes:
    `pass` forwards; `blackhole` keeps every connection open but moves no
    byte (a network partition); `reset` closes every connection and
    refuses new ones (a broker or host restart, as clients see it)."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.port = free_port()
        self.mode = "pass"
        self._conns = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._server = server
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader, writer):
        if self.mode == "reset":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        self._conns.discard(pair)
        for w in pair:
            w.transport.abort()

    async def _pipe(self, reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while self.mode == "blackhole":
                await asyncio.sleep(0.05)
            if self.mode == "reset":
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    def set_mode(self, mode):
        def apply():
            self.mode = mode
            if mode == "reset":
                for pair in list(self._conns):
                    for w in pair:
                        w.transport.abort()

        self._loop.call_soon_threadsafe(apply)
        time.sleep(0.05)


class Cluster:
    """Everything one scenario runs on; `start()` brings it up with users
    connected and messages flowing."""

    def __init__(self, name, bins, tansu, out_dir, users, rate, proxied_node=None, jwt_lb=False, cors_origin=None,
                 node_count=NODES, partitions=PARTITIONS):
        self.name, self.bins, self.tansu_bin = name, bins, tansu
        self.partitions = partitions
        self.dir = os.path.join(out_dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.users, self.rate = users, rate
        self.prefix = f"chaos-{name}-{os.getpid()}:"
        self.secret = f"chaos-{os.getpid()}"
        self.proxied_node = proxied_node
        self.jwt_lb = jwt_lb
        self.cors_origin = cors_origin
        self.node_count = node_count
        self.redis_port = free_port()
        self.lbs, self.nodes, self.procs = [], [], []
        self.node_proxy = None
        self.history_before = []

    # --- processes -------------------------------------------------------
    def _proc(self, name, argv, env=None):
        p = Proc(name, argv, self.dir, env)
        self.procs.append(p)
        return p

    def start_redis(self):
        self.redis = self._proc(
            "redis",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "", "--appendonly",
             "no", "--dir", self.dir, "--enable-debug-command", "local"],
        ).start()
        wait_for("redis", 10, self._redis_up)
        self.monitor = RedisMonitor(self.redis_port)
        self.monitor.start()

    def _redis_up(self):
        try:
            r = Resp(self.redis_port, 1)
            ok = r.call("PING") == "PONG"
            r.close()
            return ok
        except OSError:
            return False

    def restart_redis(self):
        """Redis dies and comes back empty (no persistence)."""
        self.redis.kill()
        self.monitor.stop()
        self.history_before += self.monitor.snapshot()
        self.procs.remove(self.redis)
        self.start_redis()

    def monitor_history(self):
        """Every write MONITOR saw, across Redis restarts."""
        return self.history_before + self.monitor.snapshot()

    def resp(self):
        return Resp(self.redis_port)

    def start_kafka(self):
        self.kafka_port = free_port()
        self.kafka_proxy = Proxy(self.kafka_port)
        advertised = f"tcp://127.0.0.1:{self.kafka_proxy.port}"
        self._proc(
            "tansu",
            [self.tansu_bin, "broker", "--cluster-id", "rtc-chaos", "--listener-url",
             f"tcp://127.0.0.1:{self.kafka_port}", "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            env={"NO_COLOR": "1"},
        ).start()
        self.brokers = f"127.0.0.1:{self.kafka_proxy.port}"
        wait_for("tansu", 15, lambda: subprocess.run(
            [self.bins["rtc-bench"], "create-topic", "--brokers", self.brokers, "--topic", TOPIC, "--partitions",
             str(self.partitions)], capture_output=True).returncode == 0, 0.5)

    def _lb_argv(self, name, listen, admin, auth="none"):
        argv = [self.bins["load-balancer"], "serve", "--replica-id", name, "--listen", listen, "--admin-listen", admin,
                "--auth", auth, "--redis-url", f"redis://127.0.0.1:{self.redis_port}", "--key-prefix", self.prefix,
                "--partitions", str(self.partitions), "--token-secret", self.secret, "--rate-limit", "1000000",
                "--rate-burst", "1000000", "--lease-ttl-ms", str(LEASE_TTL_MS), "--min-replicas",
                str(self.node_count), "--max-replicas", str(self.node_count), "--decision-interval-ms", "1000",
                "--heartbeat-interval-ms", str(HEARTBEAT_MS), "--dead-after-ms", str(DEAD_AFTER_MS)]
        if auth == "jwt":
            argv += ["--jwt-secret", "chaos-jwt-secret"]
        if self.cors_origin:
            argv += ["--cors-origins", self.cors_origin]
        return argv

    def start_lb(self, i):
        name = f"lb-{'ab'[i]}"
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        p = self._proc(name, self._lb_argv(name, listen, admin))
        p.listen, p.admin = listen, admin
        p.start()
        wait_live(p)
        return p

    def restart(self, p):
        """Starts `p` again with the same arguments (same ports)."""
        p.stop()
        p.start()

    def start_node(self, i):
        name = f"socket-{i}"
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        redis_port = self.redis_port
        if self.proxied_node == i:
            self.node_proxy = Proxy(self.redis_port)
            redis_port = self.node_proxy.port
        argv = [self.bins["socket"], "--node-id", name, "--listen", listen, "--admin-listen", admin,
                "--redis-url", f"redis://127.0.0.1:{redis_port}", "--key-prefix", self.prefix,
                "--kafka-brokers", self.brokers, "--topic", TOPIC, "--partitions", str(self.partitions),
                "--token-secret", self.secret, "--admin-token", ADMIN_TOKEN, "--capacity", "20000",
                "--heartbeat-interval-ms", str(HEARTBEAT_MS), "--dead-after-ms", str(DEAD_AFTER_MS),
                "--assignment-poll-ms", "500", "--peer-ack-timeout-ms", "10000",
                "--handoff-timeout-ms", str(HANDOFF_TIMEOUT_MS), "--handoff-rate", str(HANDOFF_RATE)]
        p = self._proc(name, argv)
        p.listen, p.admin, p.node_id = listen, admin, name
        p.start()
        wait_live(p)
        return p

    def start_scaler(self):
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        p = self._proc("keda-scaler", [self.bins["keda-scaler"], "--listen", listen, "--admin-listen", admin,
                                       "--redis-url", f"redis://127.0.0.1:{self.redis_port}", "--key-prefix",
                                       self.prefix, "--decision-interval-ms", "1000"])
        p.listen, p.admin = listen, admin
        p.start()
        wait_live(p)
        self.scaler = p

    def start_jwt_lb(self):
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        p = self._proc("lb-jwt", self._lb_argv("lb-jwt", listen, admin, auth="jwt"))
        p.listen, p.admin = listen, admin
        p.start()
        wait_live(p)
        self.jwt = p

    def loadgen_proc(self, name, users, rate, profile, ips, user_prefix):
        """A load generator on the cluster's load balancers (not started);
        its report and timeline paths are `.report_path`, `.timeline_path`."""
        lbs = ",".join(f"http://{lb.listen}" for lb in self.lbs)
        report, timeline = os.path.join(self.dir, f"{name}.json"), os.path.join(self.dir, f"{name}-timeline.jsonl")
        p = self._proc(name, [
            self.bins["loadgen"], "--lb", lbs, "--kafka-brokers", self.brokers, "--topic", TOPIC,
            "--rate", str(rate), "--profile", profile, "--source-ips", ",".join(ips), "--report", report,
            "--timeline", timeline, "--progress-secs", "3600", "--drain-secs", "8", "--max-attempts", "100000",
            "--backoff-max-ms", "1000", "--user-prefix", user_prefix, "--max-users", str(users)])
        p.report_path, p.timeline_path, p.users = report, timeline, users
        return p

    def start_loadgen(self, seconds):
        self.loadgen = self.loadgen_proc(
            "loadgen", self.users, self.rate, f"ramp:3s:0->{self.users},plateau:{seconds}s:{self.users}",
            [f"127.0.0.{i}" for i in range(2, 6)], f"{self.name}-")
        self.loadgen.start()

    def start(self, seconds, scaler=False):
        self.start_redis()
        self.start_kafka()
        self.lbs = [self.start_lb(0), self.start_lb(1)]
        self.nodes = [self.start_node(i) for i in range(self.node_count)]
        if scaler:
            self.start_scaler()
        if self.jwt_lb:
            self.start_jwt_lb()
        wait_for("every node owns partitions", 30, self.steady)
        self.start_loadgen(seconds)
        wait_for("every user online", 60, self.all_online, 0.5)

    # --- observations ----------------------------------------------------
    def document(self, name):
        """The JSON stored at the key `name` of this cluster, if readable."""
        try:
            r = self.resp()
            raw = r.call("GET", self.prefix + name)
            r.close()
            return json.loads(raw) if raw else None
        except (OSError, RuntimeError, ConnectionError, ValueError):
            return None

    def assignment(self):
        return self.document("assignment")

    def lease(self):
        return self.document("lb:leader")

    def leader(self):
        lease = self.lease()
        return next((lb for lb in self.lbs if lease and lb.name == lease["holder"]), None), lease

    def steady(self):
        a = self.assignment()
        if not a or len(a["nodes"]) != self.node_count or any(o is None for o in a["owners"]):
            return False
        owners = {a["nodes"][o]["id"] for o in a["owners"]}
        return len(owners) == self.node_count and all(n["state"] == "ready" for n in a["nodes"])

    def timeline(self):
        # A line being written is skipped until it is whole.
        return read_jsonl(Path(self.loadgen.timeline_path))

    def all_online(self):
        t = self.timeline()
        return bool(t) and t[-1]["users_online"] >= self.users and t[-1]["connecting"] == 0

    def recovered_after(self, since_ms, timeout=60):
        """Seconds from `since_ms` until every user is online again."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.timeline():
                if line["ts_ms"] > since_ms + 500 and line["users_online"] >= self.users and line["connecting"] == 0:
                    return round((line["ts_ms"] - since_ms) / 1000, 2)
            time.sleep(0.5)
        return None

    def route_ok(self, user="chaos-probe"):
        return any(http("GET", f"http://{lb.listen}/v1/route?user={user}", timeout=1)[0] == 200
                   for lb in self.lbs if lb.alive())

    def stop_loadgen(self):
        self.loadgen.signal(signal.SIGCONT)
        self.loadgen.stop(timeout=120)
        with open(self.loadgen.report_path) as f:
            return json.load(f)

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        self.monitor.stop()

    def panics(self):
        found = []
        for p in self.procs:
            try:
                with open(p.log_path, errors="replace") as f:
                    found += [f"{p.name}: {l.strip()[:200]}" for l in f if "panicked" in l]
            except OSError:
                pass
        return found

    def fetch_intervals(self):
        """Per partition, the [start, stop) times (ms) each node fetched it,
        from the nodes' `partition fetch changed` log lines; a SIGKILLed
        node stops at its kill time."""
        from datetime import datetime

        spans = {}
        for node in self.nodes:
            open_at, kills = {}, list(node.killed_at_ms)
            events = []
            try:
                with open(node.log_path, errors="replace") as f:
                    for line in f:
                        if '"partition fetch changed"' not in line:
                            continue
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            continue
                        ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp() * 1000
                        events.append((ts, rec["fields"]["partition"], rec["fields"].get("start") != "None"))
            except OSError:
                continue
            for k in kills:
                events.append((k, None, False))
            for ts, p, started in sorted(events, key=lambda e: e[0]):
                if p is None:  # killed: everything it fetched stops
                    for q, t0 in open_at.items():
                        spans.setdefault(q, []).append((t0, ts, node.name))
                    open_at = {}
                elif started:
                    open_at.setdefault(p, ts)
                elif p in open_at:
                    spans.setdefault(p, []).append((open_at.pop(p), ts, node.name))
            for q, t0 in open_at.items():
                spans.setdefault(q, []).append((t0, float("inf"), node.name))
        return spans

    def double_fetches(self):
        """(partition, node a, node b, overlap ms) for every two nodes that
        fetched one partition at the same time."""
        found = []
        for p, spans in self.fetch_intervals().items():
            spans.sort()
            for i, (a0, a1, an) in enumerate(spans):
                for b0, b1, bn in spans[i + 1:]:
                    if bn != an and b0 < a1:
                        found.append((p, an, bn, round(min(a1, b1) - b0)))
        return found

    def handoff_overlap_bound_ms(self):
        """How long two nodes may fetch a partition at once: the old owner
        keeps it while its users move out (every user of a node at the
        hand-off rate, then the hand-off timeout), plus a second of log
        timestamps and scheduling."""
        return HANDOFF_TIMEOUT_MS + 1000 * self.users // HANDOFF_RATE + 1000
