#!/usr/bin/env python3
"""Checks rtc's alerting rules and Grafana dashboard.

Requires Python 3.11 with PyYAML (`pip install pyyaml`: run it in the
project's venv) and promtool (Debian package `prometheus`) on PATH or in
$PROMTOOL.

  check_monitoring.py rules OUTDIR
      Lints the PrometheusRule (every alert has `for`, a severity, a summary,
      a description and a runbook_url pointing at its heading in
      deploy/README.md), extracts its `spec` to OUTDIR/rtc-rules.yaml, runs
      `promtool check rules` on it, copies the unit tests
      (deploy/prometheus/tests/*.yaml, which name `rtc-rules.yaml` in
      `rule_files`) next to it and runs `promtool test rules` on them. Every
      alert must have a test where it fires and one where it stays silent.
  check_monitoring.py dashboard OUTDIR
      Extracts every PromQL expression of the dashboard (panel targets, rows'
      nested panels, annotation queries and the templating queries), replaces
      the Grafana variables with concrete values, writes them as recording
      rules to OUTDIR/dashboard-rules.yaml and runs `promtool check rules` on
      it. Every panel query must filter namespace="$namespace".
  check_monitoring.py metrics EXPORTED_DIR [--strict]
      Every metric name the rules and the dashboard use must exist: `rtc_*`
      names in the Prometheus text expositions EXPORTED_DIR/*.prom (scraped
      from the running services), recording-rule names in the rules file, and
      anything else in EXTERNAL_METRICS below. An `rtc_*` name missing from
      the expositions but registered in the Rust sources (labelled counters
      appear only after their first event) is a warning, an error with
      --strict.

Exits 0 when the check passes, 1 with the reasons when it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE_FILE = ROOT / "deploy/k8s/components/monitoring/prometheus-rule.yaml"
TESTS_DIR = ROOT / "deploy/prometheus/tests"
DASHBOARD = ROOT / "grafana/dashboards/rtc.json"
EXTRACTED_RULES = "rtc-rules.yaml"
RUNBOOK_BASE = "https://github.com/rtc-dev/rtc/blob/main/deploy/README.md#"
SEVERITIES = {"critical", "warning", "info"}

# Metrics that do not come from rtc, with where they come from.
EXTERNAL_METRICS = {
    # kube-state-metrics: the socket and load-balancer Deployments.
    "kube_deployment_spec_replicas": "kube-state-metrics",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    # kube-state-metrics: KEDA's HPA keda-hpa-socket.
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_desired_replicas": "kube-state-metrics",
    # cAdvisor, through the kubelet's /metrics/cadvisor: container usage.
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_working_set_bytes": "cAdvisor (kubelet)",
}

# Grafana's built-in variables, replaced by values typical of a dashboard.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__from": "1700000000000",
    "__to": "1700003600000",
}


class CheckFailed(Exception):
    pass


# --- PromQL --------------------------------------------------------------

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = AGGREGATIONS | {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "atan2", "inf", "nan", "start", "end",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>\.?[0-9][0-9a-zA-Z_.]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise CheckFailed(f"cannot tokenize PromQL at {expr[pos:pos + 20]!r} in: {expr}")
        pos = m.end()
        if m.lastgroup not in ("space", "comment"):
            tokens.append((m.lastgroup, m.group()))
    return tokens


def selectors(expr: str) -> list[tuple[str, str]]:
    """The metric selectors of a PromQL expression: (metric name, the text
    of its label matchers)."""
    tokens = tokenize(expr)
    found = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text.lower() in LABEL_LIST_KEYWORDS and nxt == "(":
            i = skip_group(tokens, i + 1, "(", ")")
            continue
        if kind == "punct" and text == "[":
            # A range or subquery: durations only.
            i = skip_group(tokens, i, "[", "]")
            continue
        if kind == "punct" and text == "{":
            # A selector with no name before it: {__name__="x", ...}.
            end = skip_group(tokens, i, "{", "}")
            matchers = tokens[i + 1:end - 1]
            name = name_matcher(matchers)
            if name:
                found.append((name, " ".join(t for _, t in matchers)))
            i = end
            continue
        if kind == "ident" and nxt != "(" and text.lower() not in KEYWORDS:
            matchers = ""
            end = i + 1
            if nxt == "{":
                end = skip_group(tokens, i + 1, "{", "}")
                matchers = " ".join(t for _, t in tokens[i + 2:end - 1])
            found.append((text, matchers))
            i = end
            continue
        i += 1
    return found


def skip_group(tokens, start, open_, close):
    """Index just past the group opened at tokens[start]."""
    depth = 0
    for j in range(start, len(tokens)):
        if tokens[j][1] == open_:
            depth += 1
        elif tokens[j][1] == close:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(tokens)


def name_matcher(matchers):
    for k in range(len(matchers) - 2):
        if matchers[k][1] == "__name__" and matchers[k + 1][1] == "=" and matchers[k + 2][0] == "string":
            return matchers[k + 2][1][1:-1]
    return None


# --- rules -----------------------------------------------------------------

def load_rule_resource(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckFailed(f"{path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "PrometheusRule":
        raise CheckFailed(f"{path}: not a PrometheusRule")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        raise CheckFailed(f"{path}: apiVersion must be monitoring.coreos.com/v1")
    spec = doc.get("spec")
    if not isinstance(spec, dict) or not spec.get("groups"):
        raise CheckFailed(f"{path}: spec.groups is missing")
    return doc


def all_rules(spec: dict):
    for group in spec["groups"]:
        for rule in group.get("rules") or []:
            yield group.get("name"), rule


def lint_alerts(spec: dict) -> list[str]:
    problems = []
    seen = set()
    for group, rule in all_rules(spec):
        name = rule.get("alert")
        if not name:
            continue
        where = f"alert {name} (group {group})"
        if name in seen:
            problems.append(f"{where}: defined twice")
        seen.add(name)
        if not rule.get("for"):
            problems.append(f"{where}: no `for`")
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{where}: severity label {severity!r} is not one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problems.append(f"{where}: no {key} annotation")
        expected = RUNBOOK_BASE + name.lower()
        if annotations.get("runbook_url") and annotations["runbook_url"] != expected:
            problems.append(f"{where}: runbook_url should be {expected} (the anchor of `### {name}`)")
    return problems


def promtool() -> str:
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not tool:
        raise CheckFailed("promtool not found: apt-get install -y prometheus (or set PROMTOOL)")
    return tool


def run_promtool(*args: str) -> str:
    proc = subprocess.run([promtool(), *args], capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).rstrip()
    if proc.returncode != 0:
        raise CheckFailed(f"promtool {' '.join(args[:2])} failed:\n{output}")
    return output


def test_coverage(test_files: list[Path], alerts: set[str]) -> tuple[list[str], int]:
    """Problems with the tests, and how many test cases there are."""
    problems, cases = [], 0
    fires, silent = set(), set()
    for path in test_files:
        doc = yaml.safe_load(path.read_text()) or {}
        if doc.get("rule_files") != [EXTRACTED_RULES]:
            problems.append(f"{path.name}: rule_files must be [{EXTRACTED_RULES}] (the extracted rules)")
        for test in doc.get("tests") or []:
            cases += len(test.get("alert_rule_test") or []) + len(test.get("promql_expr_test") or [])
            for case in test.get("alert_rule_test") or []:
                name = case.get("alertname")
                if name not in alerts:
                    problems.append(f"{path.name}: tests unknown alert {name!r}")
                (fires if case.get("exp_alerts") else silent).add(name)
    for name in sorted(alerts):
        if name not in fires:
            problems.append(f"alert {name}: no test where it fires")
        if name not in silent:
            problems.append(f"alert {name}: no test where it stays silent")
    return problems, cases


def cmd_rules(args) -> None:
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    doc = load_rule_resource(args.rule_file)
    spec = doc["spec"]
    problems = lint_alerts(spec)
    if problems:
        raise CheckFailed("rule lint:\n  " + "\n  ".join(problems))
    extracted = out / EXTRACTED_RULES
    extracted.write_text(yaml.safe_dump(spec, sort_keys=False, width=1000))
    print(run_promtool("check", "rules", str(extracted)))

    tests = sorted(args.tests_dir.glob("*.yaml"))
    if not tests:
        raise CheckFailed(f"no unit tests in {args.tests_dir}")
    alerts = {r["alert"] for _, r in all_rules(spec) if r.get("alert")}
    problems, cases = test_coverage(tests, alerts)
    if problems:
        raise CheckFailed("unit tests:\n  " + "\n  ".join(problems))
    copies = []
    for test in tests:
        copy = out / test.name
        if copy.resolve() == extracted.resolve():
            raise CheckFailed(f"a test file may not be called {EXTRACTED_RULES}")
        if copy.resolve() != test.resolve():
            shutil.copyfile(test, copy)
        copies.append(str(copy))
    output = run_promtool("test", "rules", *copies)
    print(output)
    print(f"rules: {len(alerts)} alerts, {sum(1 for _ in all_rules(spec)) - len(alerts)} recording rules; "
          f"{cases} test cases in {len(tests)} files passed")


# --- dashboard ---------------------------------------------------------------

def walk_panels(panels):
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def dashboard_variables(dash: dict) -> dict[str, str]:
    values = dict(GRAFANA_BUILTINS)
    for var in (dash.get("templating") or {}).get("list") or []:
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if current in (None, "", "$__all"):
            options = var.get("options") or []
            current = options[0].get("value") if options else None
        if current in (None, "", "$__all"):
            current = {"interval": "5m", "datasource": "prometheus"}.get(var.get("type"), "x")
        values[var["name"]] = str(current)
    return values


VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str], where: str) -> str:
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise CheckFailed(f"{where}: unknown Grafana variable ${name} in: {expr}")
        return values[name]

    return VARIABLE.sub(repl, expr)


TEMPLATE_FUNCTION = re.compile(r"^\s*(label_values|query_result)\s*\((.*)\)\s*$", re.DOTALL)


def template_promql(query: str) -> str | None:
    """The PromQL inside a Prometheus template variable query, if any."""
    m = TEMPLATE_FUNCTION.match(query)
    if not m:
        return None  # label_names(), metrics(...): no PromQL
    fn, inner = m.groups()
    if fn == "query_result":
        return inner
    # label_values(selector, label) or label_values(label)
    depth, cut = 0, None
    for k, ch in enumerate(inner):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            cut = k
    return inner[:cut] if cut is not None else None


def dashboard_expressions(path: Path, keep: tuple[str, ...] = ()) -> list[tuple[str, str, str, bool]]:
    """(key, where, PromQL with variables replaced, is a panel/annotation
    query). Variables named in `keep` are left as `$name`."""
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckFailed(f"{path}: {e}") from e
    values = dashboard_variables(dash)
    values.update({name: f"${name}" for name in keep})
    found = []
    for panel in walk_panels(dash.get("panels")):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr and expr.strip():
                where = f"panel {panel.get('id')} {panel.get('title')!r} query {target.get('refId')}"
                found.append((f"panel_{panel.get('id')}_{target.get('refId')}", where,
                              substitute(expr, values, where), True))
    for k, ann in enumerate((dash.get("annotations") or {}).get("list") or []):
        if ann.get("expr"):
            where = f"annotation {ann.get('name')!r}"
            found.append((f"annotation_{k}", where, substitute(ann["expr"], values, where), True))
    for var in (dash.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        promql = template_promql(query or "")
        if promql:
            where = f"variable ${var['name']}"
            found.append((f"variable_{var['name']}", where, substitute(promql, values, where), False))
    return found


def cmd_dashboard(args) -> None:
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    exprs = dashboard_expressions(args.dashboard)
    if not exprs:
        raise CheckFailed(f"{args.dashboard}: no PromQL expressions found")
    # Every selector of every panel and annotation query filters on the
    # namespace variable (checked before it is replaced).
    problems = []
    for _, where, expr, is_query in dashboard_expressions(args.dashboard, keep=("namespace",)):
        if not is_query:
            continue
        for name, matchers in selectors(expr):
            compact = matchers.replace(" ", "")
            if 'namespace="$namespace"' not in compact and 'namespace=~"$namespace"' not in compact:
                problems.append(f'{where}: {name} does not filter namespace="$namespace"')
    if problems:
        raise CheckFailed("dashboard:\n  " + "\n  ".join(problems))
    rules = [{"record": f"dashboard:{key}", "expr": expr} for key, _, expr, _ in exprs]
    target = out / "dashboard-rules.yaml"
    target.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False, width=1000))
    try:
        print(run_promtool("check", "rules", str(target)))
    except CheckFailed as e:
        where = {f"dashboard:{key}": (w, expr) for key, w, expr, _ in exprs}
        named = [f"{where[r][0]}: {where[r][1]}" for r in sorted(set(re.findall(r'"(dashboard:\w+)"', str(e))))
                 if r in where]
        raise CheckFailed("\n  ".join([str(e), *named])) from e
    print(f"dashboard: {len(exprs)} PromQL expressions checked ({target})")


# --- metrics -----------------------------------------------------------------

def exported_names(directory: Path) -> set[str]:
    files = sorted(directory.glob("*.prom"))
    if not files:
        raise CheckFailed(f"no *.prom files in {directory}")
    names = set()
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")
    for path in files:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    name, kind = parts[2], parts[3]
                    if kind == "histogram":
                        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
                    elif kind == "summary":
                        names |= {name, f"{name}_sum", f"{name}_count"}
                    else:
                        names.add(name)
            elif line and not line.startswith("#"):
                m = sample.match(line)
                if m:
                    names.add(m.group(1))
    return names


def source_names() -> set[str]:
    """`rtc_*` metric names written as string literals in the Rust sources."""
    names = set()
    literal = re.compile(r'"(rtc_[a-z0-9_]+)"')
    for path in ROOT.glob("*/src/**/*.rs"):
        names |= set(literal.findall(path.read_text(errors="replace")))
    return names


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def cmd_metrics(args) -> None:
    exported = exported_names(Path(args.exported_dir))
    spec = load_rule_resource(args.rule_file)["spec"]
    recorded = {r["record"] for _, r in all_rules(spec) if r.get("record")}
    used: dict[str, set[str]] = {}
    for group, rule in all_rules(spec):
        where = f"rule {rule.get('alert') or rule.get('record')}"
        for name, _ in selectors(str(rule.get("expr", ""))):
            used.setdefault(name, set()).add(where)
    for _, where, expr, _ in dashboard_expressions(args.dashboard):
        for name, _ in selectors(expr):
            used.setdefault(name, set()).add(f"dashboard {where}")
    in_source = source_names()
    unknown, late = [], []
    for name in sorted(used):
        if name in recorded:
            continue
        if name.startswith("rtc_"):
            if name in exported:
                continue
            (late if base_name(name) in in_source or name in in_source else unknown).append(name)
        elif name not in EXTERNAL_METRICS:
            unknown.append(name)
    rtc = sum(1 for n in used if n.startswith("rtc_"))
    print(f"metrics: {len(used)} names used ({rtc} rtc_*, {len(used) - rtc} others), "
          f"{len(exported)} names exported in {args.exported_dir}")
    for name in late:
        print(f"warning: {name} is registered in the Rust sources but was not exported in this run "
              f"(created on its first event?); used by {', '.join(sorted(used[name]))}")
    if args.strict:
        unknown += late
    if unknown:
        lines = [f"{n} (used by {', '.join(sorted(used[n]))})" for n in sorted(set(unknown))]
        raise CheckFailed("unknown metric names:\n  " + "\n  ".join(lines))


# --- main ---------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule-file", type=Path, default=RULE_FILE, help="the PrometheusRule")
    parser.add_argument("--tests-dir", type=Path, default=TESTS_DIR, help="promtool unit tests")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="the Grafana dashboard JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rules", help="lint, check and unit-test the alerting rules")
    p.add_argument("outdir")
    p.set_defaults(run=cmd_rules)
    p = sub.add_parser("dashboard", help="check every PromQL expression of the dashboard")
    p.add_argument("outdir")
    p.set_defaults(run=cmd_dashboard)
    p = sub.add_parser("metrics", help="check the metric names against scraped expositions")
    p.add_argument("exported_dir")
    p.add_argument("--strict", action="store_true", help="names not exported in the run are errors")
    p.set_defaults(run=cmd_metrics)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors are failures too: exit 1, not argparse's 2
        return 0 if e.code == 0 else 1
    try:
        args.run(args)
    except CheckFailed as e:
        print(f"check_monitoring {args.command}: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"check_monitoring {args.command}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
