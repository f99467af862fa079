#!/usr/bin/env python3
"""Builds the demo's report.json and chart.svg from what the run recorded.

Inputs (all in the run directory given as the first argument):
  loadgen.json           the load generator's final report
  loadgen-timeline.jsonl one line per second from the load generator
  actuator-events.jsonl  the local actuator's syncs and actions
  progress.jsonl         the demo's own samples: replicas, nodes, leader
Writes report.json and chart.svg into the output directory (second argument).
Standard library only, so it runs on a fresh machine.
"""

import json
import sys
from pathlib import Path


def read_jsonl(path):
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def polyline(points, x0, x1, y0, y1, t_min, t_max, v_max, color, width=2, dash=None):
    if not points or t_max <= t_min or v_max <= 0:
        return ""
    coords = []
    for t, v in points:
        x = x0 + (x1 - x0) * (t - t_min) / (t_max - t_min)
        y = y1 - (y1 - y0) * (v / v_max)
        coords.append(f"{x:.1f},{y:.1f}")
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash_attr} '
            f'points="{" ".join(coords)}"/>')


def panel(title, series, top, t_min, t_max, width=900, height=180):
    """series: list of (label, color, [(t, v)], dash)."""
    x0, x1, y0, y1 = 70, width - 20, top + 25, top + height
    v_max = max([v for _, _, pts, _ in series for _, v in pts] + [1]) * 1.1
    out = [f'<text x="{x0}" y="{top + 15}" font-size="14" font-weight="bold">{title}</text>',
           f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#ccc"/>',
           f'<text x="{x0 - 5}" y="{y0 + 10}" font-size="11" text-anchor="end">{v_max:.0f}</text>',
           f'<text x="{x0 - 5}" y="{y1}" font-size="11" text-anchor="end">0</text>']
    legend_x = x0 + 200
    for label, color, pts, dash in series:
        out.append(polyline(pts, x0, x1, y0, y1, t_min, t_max, v_max, color, dash=dash))
        out.append(f'<text x="{legend_x}" y="{top + 15}" font-size="12" fill="{color}">{label}</text>')
        legend_x += 9 * len(label) + 30
    return "\n".join(out)


def main():
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    loadgen = {}
    if (run / "loadgen.json").exists():
        loadgen = json.loads((run / "loadgen.json").read_text() or "{}")
    timeline = read_jsonl(run / "loadgen-timeline.jsonl")
    events = read_jsonl(run / "actuator-events.jsonl")
    progress = read_jsonl(run / "progress.jsonl")

    leaders = [p.get("leader") for p in progress if p.get("leader")]
    failovers = sum(1 for a, b in zip(leaders, leaders[1:]) if a != b)
    decisions = [p for p in progress if p.get("action")]
    report = {
        "scale_outs": sum(1 for e in events if e.get("kind") == "scale_out"),
        "scale_ins": sum(1 for e in events if e.get("kind") == "scale_in"),
        "lb_scale_out_decisions": len({p.get("decided_at_ms") for p in decisions if p.get("action") == "scale_out"}),
        "lb_scale_in_decisions": len({p.get("decided_at_ms") for p in decisions if p.get("action") == "scale_in"}),
        "leader_failovers": failovers,
        "peak_nodes": max([p.get("nodes", 0) for p in progress] + [0]),
        "drained_before_lowered": progress and all(p.get("drained_before_lowered", True) for p in progress),
    }
    for key in ["messages_sent", "messages_delivered", "messages_lost", "duplicates", "order_violations",
                "double_sessions",
                "reconnects", "reconnect_p50_ms", "reconnect_p99_ms", "reconnect_max_ms", "peak_users",
                "route_errors"]:
        report[key] = loadgen.get(key)
    report["loadgen"] = loadgen
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    stamps = [r.get("ts_ms", 0) for r in timeline] + [p.get("ts_ms", 0) for p in progress]
    stamps = [s for s in stamps if s]
    if stamps:
        t_min, t_max = min(stamps), max(stamps)
        sec = lambda rows, key: [((r["ts_ms"] - t_min) / 1000, r.get(key) or 0) for r in rows if "ts_ms" in r]
        tm, tx = 0, (t_max - t_min) / 1000
        node_ids = sorted({n for p in progress for n in (p.get("per_node") or {})})
        palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"]
        per_node = [(n, palette[i % len(palette)],
                     [((p["ts_ms"] - t_min) / 1000, (p.get("per_node") or {}).get(n, 0)) for p in progress], None)
                    for i, n in enumerate(node_ids)]
        svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="900" height="860" font-family="sans-serif">',
               '<rect width="100%" height="100%" fill="white"/>',
               panel("Load (users online)", [("users", "#1f77b4", sec(timeline, "users_online"), None)], 10, tm, tx),
               panel("Replicas", [("desired", "#d62728", sec(progress, "desired"), None),
                                  ("actual", "#2ca02c", sec(progress, "nodes"), "6,3")], 220, tm, tx),
               panel("Connections per node", per_node, 430, tm, tx),
               panel("Reconnect P99 so far (ms)",
                     [("p99", "#9467bd", sec(timeline, "reconnect_p99_ms_so_far"), None)], 640, tm, tx),
               f'<text x="450" y="850" font-size="11" text-anchor="middle">seconds since start '
               f'({tx:.0f} s)</text>',
               "</svg>"]
        (out / "chart.svg").write_text("\n".join(svg) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "loadgen"}))


if __name__ == "__main__":
    main()
