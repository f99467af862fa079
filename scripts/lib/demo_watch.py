#!/usr/bin/env python3
"""The demo's live view: once a second, samples the system and prints a line.

Usage: demo_watch.py RUN_DIR REDIS_PORT KEY_PREFIX LB_ADMIN[,LB_ADMIN...]
Reads the leader lease and the scale decision from Redis (through
redis-cli), the nodes from any answering load balancer's /v1/nodes, and the
load generator's last timeline line; appends one JSON object per second to
RUN_DIR/progress.jsonl. Runs until killed. Standard library only.
"""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def redis_get(port, key):
    try:
        out = subprocess.run(["redis-cli", "-p", port, "--raw", "GET", key], capture_output=True, text=True,
                             timeout=2)
        return out.stdout.strip() or None
    except (subprocess.SubprocessError, OSError):
        return None


def nodes(admins):
    for admin in admins:
        try:
            with urllib.request.urlopen(f"http://{admin}/v1/nodes", timeout=1) as r:
                return json.load(r).get("nodes", [])
        except (OSError, ValueError):
            continue
    return []


def last_line(path):
    try:
        lines = path.read_text().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError, IndexError):
        return {}


def main():
    run, port, prefix, admins = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    progress = run / "progress.jsonl"
    started = time.time()
    while True:
        now_ms = int(time.time() * 1000)
        sample = {"ts_ms": now_ms}
        lease = redis_get(port, prefix + "lb:leader")
        if lease:
            try:
                sample["leader"] = json.loads(lease).get("holder")
            except ValueError:
                sample["leader"] = lease
        decision = redis_get(port, prefix + "scale:decision")
        if decision:
            try:
                d = json.loads(decision)
                for k in ("desired_replicas", "current_replicas", "action", "decided_at_ms", "reason", "urgency"):
                    sample[k] = d.get(k)
                sample["desired"] = d.get("desired_replicas")
            except ValueError:
                pass
        live = [n for n in nodes(admins) if n.get("alive")]
        sample["nodes"] = len(live)
        sample["per_node"] = {n["id"]: n["heartbeat"].get("connections", 0) for n in live}
        sample["states"] = {n["id"]: n["heartbeat"].get("state") for n in live}
        load = last_line(run / "loadgen-timeline.jsonl")
        sample["users_online"] = load.get("users_online")
        with progress.open("a") as f:
            f.write(json.dumps(sample) + "\n")
        print(f"[{time.time() - started:6.0f}s] nodes {sample['nodes']:>2} "
              f"desired {sample.get('desired', '-')!s:>2} ({sample.get('action', '-')}) "
              f"users {load.get('users_online', '-')!s:>5} "
              f"conns {sum(sample['per_node'].values()):>5} "
              f"msg/s {load.get('delivered_per_s', '-')!s:>5} "
              f"reconnect p99 {load.get('reconnect_p99_ms_so_far', '-')!s:>5} ms "
              f"leader {sample.get('leader', '-')}", flush=True)
        time.sleep(max(0.0, 1.0 - (time.time() * 1000 - now_ms) / 1000))


if __name__ == "__main__":
    main()
