//! The scaling engine: from the fleet's signals to one decision per tick.
//! Pure and deterministic: time is passed in, state lives in [`Engine`].
//!
//! Scale-out is fast: urgency from thresholds sets a step of 1, 2 or 4
//! nodes, the high and critical ones doubled by each consecutive scale-out
//! inside the window and capped, and never below what capacity arithmetic
//! needs for the load predicted one node start-up ahead. Scale-in is slow:
//! room for at least one node fewer (every signal's utilisation on the
//! remaining nodes, a rising trend taken one window ahead, under its low
//! watermark) for the whole window, and no scale-out in the cooldown; then
//! the nodes there was room for all through the window (up to a step) are
//! drained (their partitions moved away, their users gone or a deadline
//! passed) before the desired count is lowered. Once they are gone, the
//! window's room less the nodes removed may go next.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rtc_core::{Action, Decision, Urgency, hpa};
use serde::Serialize;

use super::config::ScaleConfig;
use super::signals::{FleetSignals, fleet_signals};
use crate::actuate::{WorkloadKind, choose_victim};
use crate::fleet::Fleet;

/// One reason the engine saw, with its urgency (none for scale-in/hold).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub urgency: Urgency,
    /// Short stable code, the `reason` label of `rtc_lb_scale_signals_total`.
    pub code: &'static str,
    pub text: String,
}

/// The figures a decision was made from (served by `/v1/decisions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    pub live: u32,
    pub serving: u32,
    pub starting: u32,
    pub connections: u64,
    pub connections_fraction: f64,
    pub max_connections_fraction: f64,
    pub cpu_mean: f64,
    pub cpu_max: f64,
    pub memory_mean: f64,
    pub memory_max: f64,
    pub mps_out: f64,
    pub p95_max_ms: f64,
    pub lag_max: u64,
    pub connections_slope: f64,
    /// Nodes capacity arithmetic asks for (load one start-up ahead).
    pub needed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// `leader_epoch` is 0: the publisher stamps it.
    pub decision: Decision,
    /// The primary reason's code (metric label).
    pub code: &'static str,
    pub findings: Vec<Finding>,
    pub inputs: Inputs,
    /// Nodes that must own no partitions: being drained, or removed and
    /// not yet stopped.
    pub excluded: BTreeSet<String>,
    /// Pods to make the cheapest to delete before `decision` is published
    /// (Deployment scale-in only).
    pub mark: Vec<String>,
    /// Marked pods that serve again (their removal was given up, or never
    /// came): their mark must go, or Kubernetes would delete them first on
    /// the next scale-in, drained or not.
    pub unmark: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Drain {
    victims: Vec<String>,
    started_ms: u64,
    target: u32,
}

#[derive(Debug, Clone)]
pub struct Engine {
    config: ScaleConfig,
    kind: WorkloadKind,
    desired: Option<u32>,
    /// Recent scale-outs, newest last, within the consecutive window.
    scale_outs: VecDeque<(u64, Urgency)>,
    /// The last scale-out, for the scale-in cooldown.
    last_scale_out_ms: Option<u64>,
    calm_since_ms: Option<u64>,
    /// How many nodes the fleet could have done without, and how many
    /// served, at each decision of the last scale-in window.
    rooms: VecDeque<(u64, u32, u32)>,
    drain: Option<Drain>,
    /// Removed nodes still alive, and since when.
    retiring: BTreeMap<String, u64>,
    /// Pods marked cheapest to delete (Deployment), until they are gone or
    /// their mark is cleared.
    marked: BTreeSet<String>,
}

impl Engine {
    pub fn new(config: ScaleConfig, kind: WorkloadKind) -> Self {
        Self {
            config,
            kind,
            desired: None,
            scale_outs: VecDeque::new(),
            last_scale_out_ms: None,
            calm_since_ms: None,
            rooms: VecDeque::new(),
            drain: None,
            retiring: BTreeMap::new(),
            marked: BTreeSet::new(),
        }
    }

    pub fn config(&self) -> &ScaleConfig {
        &self.config
    }

    /// Continues from a previous leader's decision: its desired count, its
    /// scale-out time for the cooldown and, after a scale-in, the nodes its
    /// assignment listed as draining (removed, not yet stopped). A drain in
    /// progress is not carried over: the scale-in window starts again.
    pub fn resume_from(&mut self, last: &Decision, draining: impl IntoIterator<Item = String>) {
        self.desired = Some(last.desired_replicas);
        if last.action == Action::ScaleIn {
            self.retiring.extend(draining.into_iter().map(|id| (id, last.decided_at_ms)));
            if self.kind == WorkloadKind::Deployment {
                // The previous leader marked them: if they come back, their
                // marks must be cleared by this one.
                self.marked.extend(self.retiring.keys().cloned());
            }
        }
        if last.action == Action::ScaleOut {
            self.scale_outs.push_back((last.decided_at_ms, last.urgency));
            self.last_scale_out_ms = Some(last.decided_at_ms);
        }
    }

    /// Clearing these marks failed: try again on the next decision.
    pub fn unmark_failed(&mut self, pods: impl IntoIterator<Item = String>) {
        self.marked.extend(pods);
    }

    /// A Deployment victim could not be marked (the API refused): give the
    /// drain up so the wrong pod is never removed; the victims serve again
    /// (and the next decision unmarks any that were marked).
    pub fn abandon_scale_in(&mut self, now_ms: u64) {
        if let Some(prev) = self.desired {
            self.desired = Some(prev + self.retiring.len() as u32);
        }
        self.retiring.clear();
        self.drain = None;
        self.calm_since_ms = Some(now_ms);
        self.rooms.clear();
    }

    pub fn decide(&mut self, fleet: &Fleet, now_ms: u64) -> Outcome {
        let c = &self.config;
        self.retiring
            .retain(|id, since| fleet.is_alive(id, now_ms) && now_ms.saturating_sub(*since) < c.retire_timeout_ms);
        while self.scale_outs.front().is_some_and(|(t, _)| now_ms.saturating_sub(*t) > c.consecutive_window_ms) {
            self.scale_outs.pop_front();
        }
        let excluded = self.excluded();
        let s = fleet_signals(fleet, now_ms, c.trend_window_ms, &excluded);
        let present = s.live - self.retiring.len() as u32;
        let current = self.desired.unwrap_or(present).max(present).min(c.max_replicas);
        let (needed, trend_needed) = self.needed(&s);
        let mut findings = self.pressure(&s);
        if trend_needed > current {
            let (code, why) = if needed > current { ("capacity", "load now") } else { ("trend", "load predicted") };
            findings.push(Finding {
                urgency: Urgency::Moderate,
                code,
                text: format!("{why} needs {trend_needed} nodes ({current} now)"),
            });
        }
        let reported = self.desired.unwrap_or(present);
        let inputs = inputs(&s, trend_needed);

        let mut out = if reported < c.min_replicas || findings.iter().any(|f| f.urgency > Urgency::None) {
            self.scale_out(&s, now_ms, reported, current, trend_needed, findings)
        } else {
            self.scale_in(&s, fleet, now_ms, current, findings)
        };
        out.decision.decided_at_ms = now_ms;
        out.inputs = inputs;
        out.excluded = self.excluded();
        // Marked pods that are gone need nothing; those alive and no longer
        // on their way out serve again: unmark them.
        self.marked.retain(|id| fleet.is_alive(id, now_ms));
        out.unmark = self.marked.iter().filter(|id| !self.retiring.contains_key(*id)).cloned().collect();
        for id in &out.unmark {
            self.marked.remove(id);
        }
        self.marked.extend(out.mark.iter().cloned());
        self.desired = Some(out.decision.desired_replicas);
        out
    }

    /// Nodes that must own no partitions: being drained, or removed and
    /// not yet stopped.
    pub fn excluded(&self) -> BTreeSet<String> {
        let draining = self.drain.iter().flat_map(|d| d.victims.iter().cloned());
        self.retiring.keys().cloned().chain(draining).collect()
    }

    /// Nodes needed now, and for the load one start-up ahead (rising
    /// trends only: scale-in never acts on a prediction).
    fn needed(&self, s: &FleetSignals) -> (u32, u32) {
        let c = &self.config;
        let ahead = c.node_startup_ms as f64 / 1000.0;
        let compute = |ahead: f64| {
            [
                nodes_for_load(
                    s.connections as f64 + s.connections_slope.max(0.0) * ahead,
                    s.node_capacity * c.connections_target,
                ),
                Spread::cpu(s, ahead).nodes_for(c.cpu_target),
                Spread::memory(s, ahead).nodes_for(c.memory_target),
                nodes_for_load(s.mps_out + s.mps_slope.max(0.0) * ahead, c.mps_target),
            ]
            .into_iter()
            .max()
            .unwrap_or(0)
        };
        (compute(0.0), compute(ahead))
    }

    /// Threshold breaches, each with its urgency: a single hot node is
    /// moderate, a hot fleet average or a critical node high, a critical
    /// fleet average critical.
    fn pressure(&self, s: &FleetSignals) -> Vec<Finding> {
        let c = &self.config;
        let grade = |mean: f64, max: f64, high: f64, critical: f64| {
            if mean >= critical {
                Urgency::Critical
            } else if mean >= high || max >= critical {
                Urgency::High
            } else if max >= high {
                Urgency::Moderate
            } else {
                Urgency::None
            }
        };
        let slo = c.latency_slo_ms;
        let checks = [
            (
                "connections",
                grade(s.connections_fraction, s.max_connections_fraction, c.connections_high, c.connections_critical),
                format!(
                    "connections at {:.2} of capacity (hottest node {:.2}; high {:.2})",
                    s.connections_fraction, s.max_connections_fraction, c.connections_high
                ),
            ),
            (
                "cpu",
                grade(s.cpu_mean, s.cpu_max, c.cpu_high, c.cpu_critical),
                format!("cpu mean {:.2}, max {:.2} (high {:.2})", s.cpu_mean, s.cpu_max, c.cpu_high),
            ),
            (
                "memory",
                grade(s.memory_mean, s.memory_max, c.memory_high, c.memory_critical),
                format!("memory mean {:.2}, max {:.2} (high {:.2})", s.memory_mean, s.memory_max, c.memory_high),
            ),
            (
                "latency",
                grade(s.p95_mean_ms, s.p95_max_ms, slo, 2.0 * slo),
                format!("p95 latency mean {:.0} ms, max {:.0} ms (SLO {slo:.0} ms)", s.p95_mean_ms, s.p95_max_ms),
            ),
            (
                "kafka_lag",
                grade(s.lag_mean, s.lag_max as f64, c.lag_high as f64, c.lag_critical as f64),
                format!("kafka lag mean {:.0}, max {} (high {})", s.lag_mean, s.lag_max, c.lag_high),
            ),
        ];
        checks
            .into_iter()
            .filter(|(_, u, _)| *u > Urgency::None)
            .map(|(code, urgency, text)| Finding { urgency, code, text })
            .collect()
    }

    fn scale_out(
        &mut self,
        s: &FleetSignals,
        now_ms: u64,
        reported: u32,
        current: u32,
        needed: u32,
        mut findings: Vec<Finding>,
    ) -> Outcome {
        let c = &self.config;
        if let Some(drain) = self.drain.take() {
            findings.push(finding("drain_cancelled", format!("drain of {} cancelled", drain.victims.join(", "))));
        }
        if reported < c.min_replicas {
            findings.push(Finding {
                urgency: Urgency::Moderate,
                code: "min_replicas",
                text: format!("{reported} nodes, minimum {}", c.min_replicas),
            });
        }
        findings.sort_by_key(|f| std::cmp::Reverse(f.urgency));
        let urgency = findings[0].urgency;
        let code = findings[0].code;

        // Nodes asked for recently and not serving yet: wait for them
        // (up to twice the expected start-up time) unless the need grew or
        // turned critical (refused users do not show in the connections
        // the arithmetic counts). A rise the arithmetic already covers
        // waits, however it is graded.
        let last = self.scale_outs.back().copied();
        let missing = current.saturating_sub(s.serving);
        if let Some((at, last_urgency)) = last
            && now_ms.saturating_sub(at) < 2 * c.node_startup_ms
            && missing > 0
            && needed <= current
            && (urgency <= last_urgency || urgency < Urgency::Critical)
            && reported >= c.min_replicas
        {
            let text = format!("waiting for {missing} node(s) asked for {} s ago", now_ms.saturating_sub(at) / 1000);
            return hold(current, urgency, "waiting_for_nodes", text, findings);
        }

        let base = match urgency {
            Urgency::None | Urgency::Moderate => 1u32,
            Urgency::High => 2,
            Urgency::Critical => 4,
        };
        // Only pressure on the fleet (high, critical) grows exponentially: a
        // moderate finding (one hot node, a trend, capacity arithmetic) is
        // already sized by `needed`, and doubling it overshot.
        let consecutive = if urgency >= Urgency::High { self.scale_outs.len() as u32 } else { 0 };
        let step = base.saturating_mul(1u32 << consecutive.min(5)).min(c.max_step);
        let stepped = if current < c.min_replicas { c.min_replicas } else { current + step };
        let mut desired = stepped.max(needed);
        if desired > c.max_replicas {
            desired = c.max_replicas;
            findings.push(finding("max_replicas", format!("capped at {} replicas", c.max_replicas)));
        }
        if desired <= current {
            return hold(current, urgency, "max_replicas", format!("at the maximum of {}", c.max_replicas), findings);
        }
        if !hpa_honours(current, desired, c.hpa_tolerance) {
            let enlarged = hpa::smallest_honoured_scale_up(current, c.hpa_tolerance).unwrap_or(u32::MAX);
            if enlarged > c.max_replicas {
                let text = format!("{current} -> {desired} is within the HPA tolerance and cannot be enlarged");
                return hold(current, urgency, "hpa_tolerance", text, findings);
            }
            findings.push(finding("hpa_tolerance", format!("step enlarged {desired} -> {enlarged} for the HPA")));
            desired = enlarged;
        }
        self.scale_outs.push_back((now_ms, urgency));
        self.last_scale_out_ms = Some(now_ms);
        self.calm_since_ms = None;
        decision(Action::ScaleOut, current, desired, urgency, code, findings)
    }

    fn scale_in(
        &mut self,
        s: &FleetSignals,
        fleet: &Fleet,
        now_ms: u64,
        current: u32,
        mut findings: Vec<Finding>,
    ) -> Outcome {
        let c = self.config.clone();
        let room = self.room(s);
        let calm = self.calm(s, room);
        if !calm || self.calm_since_ms.is_none() {
            self.rooms.clear();
        }
        self.rooms.push_back((now_ms, room, s.serving));
        while self.rooms.front().is_some_and(|(t, _, _)| now_ms.saturating_sub(*t) > c.scale_in_window_ms) {
            self.rooms.pop_front();
        }
        self.calm_since_ms = if calm { Some(self.calm_since_ms.unwrap_or(now_ms)) } else { None };

        if let Some(drain) = self.drain.clone() {
            if let Some(why) = self.over_projection(s, 0) {
                self.drain = None;
                return hold(current, Urgency::None, "drain_cancelled", format!("drain cancelled: {why}"), findings);
            }
            let left: u64 = drain
                .victims
                .iter()
                .filter(|v| fleet.is_alive(v, now_ms))
                .filter_map(|v| s.nodes.iter().find(|n| &n.id == v))
                .map(|n| n.connections)
                .sum();
            let overdue = now_ms.saturating_sub(drain.started_ms) >= c.drain_deadline_ms;
            if left > 0 && !overdue {
                let text = format!("draining {}: {left} connection(s) left", drain.victims.join(", "));
                return hold(current, Urgency::None, "draining", text, findings);
            }
            self.drain = None;
            let code = if left > 0 { "drain_deadline" } else { "drained" };
            let text = format!(
                "{} drained ({left} connection(s) left after {} s); removing",
                drain.victims.join(", "),
                now_ms.saturating_sub(drain.started_ms) / 1000
            );
            findings.push(finding(code, text));
            for v in &drain.victims {
                self.retiring.insert(v.clone(), now_ms);
            }
            // The window goes on: what was room before counts less the
            // nodes removed since (see `window_room`).
            let mut out = decision(Action::ScaleIn, current, drain.target, Urgency::None, code, findings);
            if self.kind == WorkloadKind::Deployment {
                out.mark = drain.victims;
            }
            return out;
        }
        if !self.retiring.is_empty() {
            let names: Vec<&str> = self.retiring.keys().map(String::as_str).collect();
            return hold(
                current,
                Urgency::None,
                "retiring",
                format!("waiting for {} to stop", names.join(", ")),
                findings,
            );
        }
        if !calm {
            return hold(current, Urgency::None, "steady", "no room for fewer nodes".into(), findings);
        }
        let calm_for = now_ms.saturating_sub(self.calm_since_ms.unwrap_or(now_ms));
        let window_room = self.window_room(s.serving);
        if calm_for < c.scale_in_window_ms || window_room == 0 {
            let text = format!(
                "room for {window_room} fewer node(s) for {} s of {} s",
                calm_for / 1000,
                c.scale_in_window_ms / 1000
            );
            return hold(current, Urgency::None, "scale_in_window", text, findings);
        }
        if let Some(at) = self.last_scale_out_ms
            && now_ms.saturating_sub(at) < c.scale_in_cooldown_ms
        {
            return hold(current, Urgency::None, "cooldown", "scaled out recently".into(), findings);
        }
        if current <= c.min_replicas {
            return hold(
                current,
                Urgency::None,
                "min_replicas",
                format!("at the minimum of {}", c.min_replicas),
                findings,
            );
        }
        if s.live != current || s.serving != current {
            let text = format!("{} of {current} nodes serving", s.serving);
            return hold(current, Urgency::None, "steady", text, findings);
        }
        // As many nodes as there was room for all through the window, up to
        // the step; at least what the HPA's tolerance lets through.
        let target = match hpa::largest_honoured_scale_down(current, c.hpa_tolerance) {
            Some(t) if current - t <= c.scale_in_max_step => {
                let room = window_room.min(c.scale_in_max_step);
                t.min(current.saturating_sub(room)).max(c.min_replicas)
            }
            _ => {
                let text = format!(
                    "removing {} node(s) from {current} is within the HPA tolerance {}; held",
                    c.scale_in_max_step, c.hpa_tolerance
                );
                return hold(current, Urgency::None, "hpa_tolerance", text, findings);
            }
        };
        let remove = current - target;
        if let Some(why) = self.over_projection(s, remove) {
            return hold(current, Urgency::None, "projected_load", why, findings);
        }
        let mut candidates: Vec<(String, u64)> =
            s.nodes.iter().filter(|n| n.serving).map(|n| (n.id.clone(), n.connections)).collect();
        let mut victims = Vec::new();
        for _ in 0..remove {
            let Some(v) = choose_victim(self.kind, &candidates) else { break };
            candidates.retain(|(id, _)| *id != v);
            victims.push(v);
        }
        let text =
            format!("low load for {} s: draining {} before {current} -> {target}", calm_for / 1000, victims.join(", "));
        self.drain = Some(Drain { victims, started_ms: now_ms, target });
        hold(current, Urgency::None, "draining", text, findings)
    }

    /// Calm: nothing hot in absolute terms (latency, lag, message rate),
    /// and room for at least one node fewer.
    fn calm(&self, s: &FleetSignals, room: u32) -> bool {
        let c = &self.config;
        s.serving > 0
            && room > 0
            && s.p95_max_ms < c.latency_slo_ms / 2.0
            && s.lag_max < c.lag_low
            && (c.mps_target == 0.0 || s.mps_out / f64::from(s.serving) < c.mps_target * c.connections_low)
    }

    /// The room there was all through the last scale-in window, less the
    /// serving nodes removed (or being drained) since each reading.
    fn window_room(&self, serving: u32) -> u32 {
        self.rooms.iter().map(|(_, room, then)| room.saturating_sub(then.saturating_sub(serving))).min().unwrap_or(0)
    }

    /// How many serving nodes could go with every signal's projected
    /// utilisation on the rest under its low watermark.
    fn room(&self, s: &FleetSignals) -> u32 {
        (1..s.serving).take_while(|k| self.over_projection(s, *k).is_none()).last().unwrap_or(0)
    }

    /// Why the serving nodes minus `remove` would be too loaded, if so:
    /// a signal's projected utilisation at or above its low watermark.
    fn over_projection(&self, s: &FleetSignals, remove: u32) -> Option<String> {
        let c = &self.config;
        let left = s.serving.checked_sub(remove).filter(|n| *n > 0)? as f64;
        let capacity = s.node_capacity * left;
        // A rising load is taken where it will be one window from now, so
        // that a scale-in is not undone by the next rise.
        let window = c.scale_in_window_ms as f64 / 1000.0;
        let connections = s.connections as f64 + s.connections_slope.max(0.0) * window;
        // A signal whose low watermark is above 1 is left out.
        let projected = [
            ("connections", c.connections_low, if capacity > 0.0 { connections / capacity } else { 0.0 }),
            ("cpu", c.cpu_low, Spread::cpu(s, window).per_node(left)),
            ("memory", c.memory_low, Spread::memory(s, window).per_node(left)),
        ];
        projected
            .into_iter()
            .filter(|(_, low, _)| *low <= 1.0)
            .find(|(_, bound, v)| v >= bound)
            .map(|(name, bound, v)| format!("{name} would reach {v:.2} on {left} node(s) (bound {bound:.2})"))
    }
}

/// Fewest nodes that carry `load` at `per_node` each (0 with no load, or
/// with a signal left out).
fn nodes_for_load(load: f64, per_node: f64) -> u32 {
    if per_node > 0.0 && load > 0.0 { (load / per_node - 1e-9).ceil() as u32 } else { 0 }
}

/// CPU or memory over the serving nodes: the total, a rising trend taken
/// some seconds ahead, and the part of each node that stays on it. Only the
/// rest moves when nodes come or go.
struct Spread {
    total: f64,
    fixed: f64,
    serving: f64,
}

impl Spread {
    fn new(total: f64, slope: f64, fixed: f64, s: &FleetSignals, ahead_s: f64) -> Self {
        Self { total: total + slope.max(0.0) * ahead_s, fixed, serving: f64::from(s.serving) }
    }

    fn cpu(s: &FleetSignals, ahead_s: f64) -> Self {
        Self::new(s.cpu_total, s.cpu_slope, s.cpu_fixed, s, ahead_s)
    }

    fn memory(s: &FleetSignals, ahead_s: f64) -> Self {
        Self::new(s.memory_total, s.memory_slope, s.memory_fixed, s, ahead_s)
    }

    /// The part that moves with the users.
    fn moving(&self) -> f64 {
        (self.total - self.serving * self.fixed).max(0.0)
    }

    /// What the moving part leaves on each of `nodes` nodes.
    fn per_node(&self, nodes: f64) -> f64 {
        self.fixed + self.moving() / nodes
    }

    /// Fewest nodes that keep each under `target` (0 with no load).
    fn nodes_for(&self, target: f64) -> u32 {
        if self.fixed < target {
            nodes_for_load(self.moving(), target - self.fixed)
        } else {
            // Idle nodes are at the target already: more nodes do not help,
            // and the total is what it was.
            nodes_for_load(self.total, target)
        }
    }
}

/// Whether the HPA acts on `desired` (reported as an `AverageValue` metric
/// with target 1) when it has `current` replicas.
pub fn hpa_honours(current: u32, desired: u32, tolerance: f64) -> bool {
    desired != current && hpa::external_average_value(current, f64::from(desired), 1.0, tolerance, tolerance) == desired
}

fn finding(code: &'static str, text: String) -> Finding {
    Finding { urgency: Urgency::None, code, text }
}

fn inputs(s: &FleetSignals, needed: u32) -> Inputs {
    Inputs {
        live: s.live,
        serving: s.serving,
        starting: s.starting,
        connections: s.connections,
        connections_fraction: s.connections_fraction,
        max_connections_fraction: s.max_connections_fraction,
        cpu_mean: s.cpu_mean,
        cpu_max: s.cpu_max,
        memory_mean: s.memory_mean,
        memory_max: s.memory_max,
        mps_out: s.mps_out,
        p95_max_ms: s.p95_max_ms,
        lag_max: s.lag_max,
        connections_slope: s.connections_slope,
        needed,
    }
}

fn decision(
    action: Action,
    current: u32,
    desired: u32,
    urgency: Urgency,
    code: &'static str,
    findings: Vec<Finding>,
) -> Outcome {
    let mut reason: String = findings.iter().map(|f| f.text.as_str()).collect::<Vec<_>>().join("; ");
    reason.truncate(rtc_core::decision::MAX_REASON_LEN);
    Outcome {
        decision: Decision {
            v: rtc_core::CONTRACT_VERSION,
            desired_replicas: desired,
            current_replicas: current,
            action,
            step: desired.abs_diff(current),
            urgency,
            reason,
            decided_at_ms: 0,
            leader_epoch: 0,
        },
        code,
        findings,
        inputs: inputs(&FleetSignals::default(), 0),
        excluded: BTreeSet::new(),
        mark: Vec::new(),
        unmark: Vec::new(),
    }
}

/// Keeps `current`; the hold's own reason goes first.
fn hold(current: u32, urgency: Urgency, code: &'static str, text: String, mut findings: Vec<Finding>) -> Outcome {
    findings.insert(0, finding(code, text));
    decision(Action::Hold, current, current, urgency, code, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::sim::heartbeat;
    use rtc_core::{Heartbeat, NodeState};

    /// Drives one engine with hand-made heartbeats, one per node per call.
    struct Bench {
        fleet: Fleet,
        engine: Engine,
        seq: u64,
    }

    impl Bench {
        fn new(config: ScaleConfig, kind: WorkloadKind) -> Self {
            Self { fleet: Fleet::new(1000, 600_000), engine: Engine::new(config, kind), seq: 0 }
        }

        /// One victim per scale-in, which most tests follow by name.
        fn one_at_a_time() -> ScaleConfig {
            ScaleConfig { scale_in_max_step: 1, ..ScaleConfig::default() }
        }

        fn deployment() -> Self {
            Self::new(Self::one_at_a_time(), WorkloadKind::Deployment)
        }

        /// Every node reports at `now`; `edit` may change its heartbeat.
        fn tick_with(&mut self, now: u64, nodes: &[(&str, u64)], edit: impl Fn(&mut Heartbeat)) -> Outcome {
            self.seq += 1;
            for (id, connections) in nodes {
                let mut hb = heartbeat(id, self.seq, now, NodeState::Ready);
                hb.connections = *connections;
                hb.cpu = 0.05 + 0.25 * (*connections as f64 / 1000.0);
                hb.memory = 0.2;
                hb.p95_latency_ms = 10.0;
                edit(&mut hb);
                self.fleet.observe(hb, now).unwrap();
            }
            self.engine.decide(&self.fleet, now)
        }

        fn tick(&mut self, now: u64, nodes: &[(&str, u64)]) -> Outcome {
            self.tick_with(now, nodes, |_| {})
        }
    }

    fn four(connections: [u64; 4]) -> Vec<(&'static str, u64)> {
        ["n0", "n1", "n2", "n3"].into_iter().zip(connections).collect()
    }

    fn summary(out: &Outcome) -> (Action, Urgency, &'static str, u32) {
        (out.decision.action, out.decision.urgency, out.code, out.decision.desired_replicas)
    }

    #[test]
    fn scale_out_urgency_and_step_per_rule() {
        use Action::*;
        use Urgency::*;
        type Edit = fn(&mut Heartbeat);
        type Expected = (Action, Urgency, &'static str, u32);
        let cases: [(&str, [u64; 4], Edit, Expected); 9] = [
            ("between the watermarks", [500; 4], |_| {}, (Hold, None, "steady", 4)),
            ("one hot node", [850, 500, 500, 500], |_| {}, (ScaleOut, Moderate, "connections", 5)),
            ("hot fleet", [850; 4], |_| {}, (ScaleOut, High, "connections", 6)),
            ("critical fleet", [970; 4], |_| {}, (ScaleOut, Critical, "connections", 8)),
            ("cpu over high on average", [400; 4], |h| h.cpu = 0.8, (ScaleOut, High, "cpu", 6)),
            (
                "memory critical on one node",
                [400; 4],
                |h| h.memory = if h.node_id == "n0" { 0.95 } else { 0.5 },
                (ScaleOut, High, "memory", 6),
            ),
            ("latency over the SLO", [400; 4], |h| h.p95_latency_ms = 150.0, (ScaleOut, High, "latency", 6)),
            ("latency over twice the SLO", [400; 4], |h| h.p95_latency_ms = 250.0, (ScaleOut, Critical, "latency", 8)),
            (
                "lag on one node",
                [400; 4],
                |h| h.kafka_lag = if h.node_id == "n2" { 20_000 } else { 0 },
                (ScaleOut, Moderate, "kafka_lag", 5),
            ),
        ];
        for (name, connections, edit, expected) in cases {
            let mut bench = Bench::deployment();
            let out = bench.tick_with(0, &four(connections), edit);
            assert_eq!(summary(&out), expected, "{name}: {}", out.decision.reason);
            assert_eq!(out.decision.step, expected.3.abs_diff(4), "{name}");
        }
    }

    #[test]
    fn capacity_arithmetic_sets_the_floor() {
        // Mean 0.79 is under the high watermark, but 4 x 790 users at the
        // 0.70 target need 5 nodes.
        let mut bench = Bench::deployment();
        let out = bench.tick(0, &four([790; 4]));
        assert_eq!(summary(&out), (Action::ScaleOut, Urgency::Moderate, "capacity", 5), "{}", out.decision.reason);
        assert_eq!(out.inputs.needed, 5);
    }

    #[test]
    fn consecutive_scale_outs_double_the_step_up_to_the_cap() {
        // No HPA tolerance, so steps are never enlarged here.
        let config = ScaleConfig { hpa_tolerance: 0.0, consecutive_window_ms: 300_000, ..ScaleConfig::default() };
        let mut bench = Bench::new(config, WorkloadKind::Deployment);
        // A hot fleet (mean over the high watermark): 2, doubled.
        let hot = four([850, 820, 820, 820]);
        let mut steps = Vec::new();
        for i in 0..5 {
            // Past twice the start-up time each time, so it does not wait.
            let out = bench.tick(i * 61_000, &hot);
            assert_eq!(out.decision.urgency, Urgency::High);
            steps.push(out.decision.step);
        }
        assert_eq!(steps, vec![2, 4, 5, 5, 5]);
        // Outside the consecutive window the step starts again.
        let out = bench.tick(4 * 61_000 + 301_000, &hot);
        assert_eq!(out.decision.step, 2);
        // One hot node (moderate) is not doubled: a node at a time.
        let config = ScaleConfig { hpa_tolerance: 0.0, consecutive_window_ms: 300_000, ..ScaleConfig::default() };
        let mut bench = Bench::new(config, WorkloadKind::Deployment);
        let steps: Vec<u32> =
            (0..3).map(|i| bench.tick(i * 61_000, &four([850, 500, 500, 500])).decision.step).collect();
        assert_eq!(steps, vec![1, 1, 1]);
    }

    #[test]
    fn waits_for_the_nodes_it_asked_for_unless_things_get_worse() {
        let mut bench = Bench::deployment();
        assert_eq!(bench.tick(0, &four([850, 500, 500, 500])).decision.desired_replicas, 5);
        let out = bench.tick(2_000, &four([850, 500, 500, 500]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::Moderate, "waiting_for_nodes", 5));
        let out = bench.tick(4_000, &four([970; 4]));
        assert_eq!(summary(&out), (Action::ScaleOut, Urgency::Critical, "connections", 10), "{}", out.decision.reason);
        assert_eq!(out.decision.current_replicas, 5, "counts the node still starting");
    }

    #[test]
    fn steps_the_hpa_would_ignore_are_enlarged_or_held() {
        let nodes: Vec<(String, u64)> = (0..20).map(|i| (format!("n{i:02}"), if i == 0 { 850 } else { 500 })).collect();
        let nodes: Vec<(&str, u64)> = nodes.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        let mut bench = Bench::deployment();
        let out = bench.tick(0, &nodes);
        let expected = hpa::smallest_honoured_scale_up(20, 0.1).unwrap();
        assert!(expected > 21);
        assert_eq!(summary(&out), (Action::ScaleOut, Urgency::Moderate, "connections", expected));
        assert!(out.findings.iter().any(|f| f.code == "hpa_tolerance"), "{:?}", out.findings);

        let capped = ScaleConfig { max_replicas: 21, ..ScaleConfig::default() };
        let mut bench = Bench::new(capped, WorkloadKind::Deployment);
        let out = bench.tick(0, &nodes);
        assert_eq!(summary(&out), (Action::Hold, Urgency::Moderate, "hpa_tolerance", 20), "{}", out.decision.reason);
    }

    #[test]
    fn replica_bounds() {
        let mut bench = Bench::deployment();
        let out = bench.tick(0, &[]);
        assert_eq!(summary(&out), (Action::ScaleOut, Urgency::Moderate, "min_replicas", 2));
        let at_max = ScaleConfig { max_replicas: 4, ..ScaleConfig::default() };
        let mut bench = Bench::new(at_max, WorkloadKind::Deployment);
        let out = bench.tick(0, &four([970; 4]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::Critical, "max_replicas", 4));
    }

    const LOW: [u64; 4] = [100, 50, 120, 100];

    /// Runs a calm fleet until the engine starts a drain; returns its time.
    fn calm_until_drain(bench: &mut Bench, nodes: &[(&str, u64)]) -> u64 {
        calm_until_drain_with(bench, nodes, |_| {})
    }

    fn calm_until_drain_with(bench: &mut Bench, nodes: &[(&str, u64)], edit: impl Fn(&mut Heartbeat) + Copy) -> u64 {
        let mut now = 0;
        loop {
            let out = bench.tick_with(now, nodes, edit);
            if out.code == "draining" {
                return now;
            }
            assert_eq!(summary(&out).0, Action::Hold);
            assert_eq!(out.code, "scale_in_window", "{}", out.decision.reason);
            now += 2_000;
        }
    }

    #[test]
    fn scale_in_drains_the_emptiest_node_first_then_lowers_desired() {
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        assert_eq!(started, 300_000, "the whole window first");
        assert_eq!(bench.engine.excluded(), BTreeSet::from(["n1".to_owned()]));
        // Still users on n1: hold.
        let out = bench.tick(started + 2_000, &four(LOW));
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "draining", 4));
        assert_eq!(out.excluded, BTreeSet::from(["n1".to_owned()]));
        // They left: desired goes down, n1 is marked.
        let out = bench.tick(started + 4_000, &four([130, 0, 150, 140]));
        assert_eq!(summary(&out), (Action::ScaleIn, Urgency::None, "drained", 3), "{}", out.decision.reason);
        assert_eq!(out.mark, vec!["n1".to_owned()]);
        // n1 still alive: held, still excluded, nothing else removed.
        let out = bench.tick(started + 6_000, &four([130, 0, 150, 140]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "retiring", 3));
        assert!(out.excluded.contains("n1"));
        // n1 stopped. The window showed room for two fewer all along, so
        // the next drain starts at once (one node a step here).
        let three = [("n0", 130), ("n2", 150), ("n3", 140)];
        let out = bench.tick(started + 10_000, &three);
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "draining", 3), "{}", out.decision.reason);
        assert_eq!(out.excluded, BTreeSet::from(["n0".to_owned()]));
        // Once it is gone, no room is left from that window: wait.
        let two = [("n2", 200), ("n3", 210)];
        bench.tick(started + 12_000, &[("n0", 0), ("n2", 200), ("n3", 210)]);
        let out = bench.tick(started + 20_000, &two);
        assert_eq!(summary(&out).2, "scale_in_window", "{}", out.decision.reason);
    }

    #[test]
    fn statefulset_victim_is_the_highest_ordinal_and_nothing_is_marked() {
        let mut bench = Bench::new(Bench::one_at_a_time(), WorkloadKind::StatefulSet);
        let nodes = [("socket-2", 10), ("socket-9", 300), ("socket-10", 200), ("socket-0", 50)];
        let started = calm_until_drain(&mut bench, &nodes);
        assert_eq!(bench.engine.excluded(), BTreeSet::from(["socket-10".to_owned()]));
        let nodes = [("socket-2", 100), ("socket-9", 300), ("socket-10", 0), ("socket-0", 150)];
        let out = bench.tick(started + 2_000, &nodes);
        assert_eq!(summary(&out), (Action::ScaleIn, Urgency::None, "drained", 3));
        assert!(out.mark.is_empty());
    }

    #[test]
    fn a_drain_ends_at_its_deadline_or_when_load_returns() {
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        let out = bench.tick(started + 58_000, &four(LOW));
        assert_eq!(out.code, "draining");
        let out = bench.tick(started + 60_000, &four(LOW));
        assert_eq!(summary(&out), (Action::ScaleIn, Urgency::None, "drain_deadline", 3), "{}", out.decision.reason);

        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        let out = bench.tick(started + 2_000, &four([970; 4]));
        assert_eq!(out.decision.action, Action::ScaleOut);
        assert!(out.excluded.is_empty(), "the victim serves again");
        assert!(out.findings.iter().any(|f| f.code == "drain_cancelled"));
    }

    #[test]
    fn scale_in_needs_room_on_the_remaining_nodes_and_no_recent_scale_out() {
        // Memory 0.45 is low, but on 3 of 4 nodes it would be 0.6: no room.
        let mut bench = Bench::deployment();
        let mut out = bench.tick_with(0, &four(LOW), |h| h.memory = 0.45);
        for now in (2_000..=300_000).step_by(2_000) {
            out = bench.tick_with(now, &four(LOW), |h| h.memory = 0.45);
        }
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "steady", 4), "{}", out.decision.reason);
        // At 0.44 there is room for one fewer (0.587 on 3), not two (0.88).
        let mut bench =
            Bench::new(ScaleConfig { scale_in_max_step: 3, ..ScaleConfig::default() }, WorkloadKind::Deployment);
        let started = calm_until_drain_with(&mut bench, &four(LOW), |h| h.memory = 0.44);
        assert_eq!(bench.engine.excluded().len(), 1, "room for one: {started}");
        // Memory 0.15 (0.6 in all): room for two fewer (0.3 each), not three.
        let mut bench =
            Bench::new(ScaleConfig { scale_in_max_step: 3, ..ScaleConfig::default() }, WorkloadKind::Deployment);
        calm_until_drain(&mut bench, &four(LOW));
        assert_eq!(bench.engine.excluded(), BTreeSet::from(["n1".to_owned(), "n3".to_owned()]), "the emptiest");

        // CPU 0.35 on an idle node + 0.25 per 1000 users: the 0.35 stays on
        // each node, only 0.1 in all moves. Room for three fewer (0.45 on
        // one node), where taking all 1.5 to move would see one (0.5 on 3).
        let one_node_min = ScaleConfig { scale_in_max_step: 3, min_replicas: 1, ..ScaleConfig::default() };
        let mut bench = Bench::new(one_node_min, WorkloadKind::Deployment);
        let cpu = |h: &mut Heartbeat| {
            h.cpu = 0.35 + 0.25 * h.connections as f64 / 1000.0;
            h.memory = 0.1;
        };
        calm_until_drain_with(&mut bench, &four(LOW), cpu);
        assert_eq!(bench.engine.excluded().len(), 3);

        // A signal left out (thresholds above 1, as the one-machine demo
        // does for the host's CPU) is left out of the projection as well.
        let cpu_off =
            ScaleConfig { cpu_low: 1.5, cpu_target: 2.0, cpu_high: 2.0, cpu_critical: 2.0, ..ScaleConfig::default() };
        let mut bench = Bench::new(cpu_off, WorkloadKind::Deployment);
        for now in (0..=300_000).step_by(2_000) {
            out = bench.tick_with(now, &four(LOW), |h| h.cpu = 0.95);
        }
        assert_eq!(out.code, "draining", "{}", out.decision.reason);

        let slow = ScaleConfig { scale_in_cooldown_ms: 600_000, ..ScaleConfig::default() };
        let mut bench = Bench::new(slow, WorkloadKind::Deployment);
        assert_eq!(bench.tick(0, &four([850, 500, 500, 500])).decision.action, Action::ScaleOut);
        let five = [("n0", 100), ("n1", 50), ("n2", 120), ("n3", 100), ("n4", 100)];
        for now in (2_000..=400_000).step_by(2_000) {
            out = bench.tick(now, &five);
        }
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "cooldown", 5), "{}", out.decision.reason);
    }

    #[test]
    fn a_scale_in_the_api_refused_is_given_up() {
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        let out = bench.tick(started + 2_000, &four([130, 0, 150, 140]));
        assert_eq!(out.decision.desired_replicas, 3);
        assert_eq!(out.mark, ["n1"]);
        bench.engine.abandon_scale_in(started + 2_000);
        assert!(bench.engine.excluded().is_empty());
        let out = bench.tick(started + 4_000, &four([130, 0, 150, 140]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "scale_in_window", 4));
        assert_eq!(out.unmark, ["n1"], "the victim serves again: its mark goes");
        let out = bench.tick(started + 6_000, &four([130, 0, 150, 140]));
        assert!(out.unmark.is_empty(), "once");
        // A clear that failed is tried again next time.
        bench.engine.unmark_failed(["n1".to_owned()]);
        assert_eq!(bench.tick(started + 8_000, &four([130, 0, 150, 140])).unmark, ["n1"]);
    }

    #[test]
    fn a_victim_that_was_never_removed_is_unmarked_when_it_serves_again() {
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        let out = bench.tick(started + 2_000, &four([130, 0, 150, 140]));
        assert_eq!((out.decision.action, out.mark.clone()), (Action::ScaleIn, vec!["n1".to_owned()]));
        // Kubernetes never removed it: past the retire timeout it serves
        // again (a new drain may pick it, and mark it when it is removed).
        let later = started + 2_000 + bench.engine.config().retire_timeout_ms;
        let out = bench.tick(later, &four([130, 0, 150, 140]));
        assert_eq!(out.unmark, ["n1"]);
        // A victim that stopped needs nothing.
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        bench.tick(started + 2_000, &four([130, 0, 150, 140]));
        let three = [("n0", 130), ("n2", 150), ("n3", 140)];
        let out = bench.tick(started + 2_000 + bench.engine.config().retire_timeout_ms, &three);
        assert!(out.unmark.is_empty());
    }

    #[test]
    fn a_new_leader_continues_from_the_last_decision() {
        let mut bench = Bench::deployment();
        let last = bench.tick(0, &four([970; 4])).decision;
        let mut next = Bench::deployment();
        next.engine.resume_from(&last, ["n3".to_owned()]);
        let out = next.tick(2_000, &four([970; 4]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::Critical, "waiting_for_nodes", 8));
        assert!(out.excluded.is_empty(), "only a scale-in leaves nodes retiring");

        // After a scale-in the removed node stays excluded and uncounted.
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        let last = bench.tick(started + 2_000, &four([130, 0, 150, 140])).decision;
        assert_eq!(last.action, Action::ScaleIn);
        let mut next = Bench::deployment();
        next.engine.resume_from(&last, ["n1".to_owned()]);
        let out = next.tick(started + 4_000, &four([130, 0, 150, 140]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "retiring", 3));
        assert_eq!(out.excluded, BTreeSet::from(["n1".to_owned()]));
    }

    #[test]
    fn clocks_that_disagree_or_step_back_never_underflow() {
        // The previous leader stamped its scale-in with a clock 60 s ahead
        // of this one: n1 is still retiring, not dropped or a panic.
        let mut bench = Bench::deployment();
        let started = calm_until_drain(&mut bench, &four(LOW));
        let mut last = bench.tick(started + 2_000, &four([130, 0, 150, 140])).decision;
        assert_eq!(last.action, Action::ScaleIn);
        last.decided_at_ms += 60_000;
        let mut next = Bench::deployment();
        next.engine.resume_from(&last, ["n1".to_owned()]);
        let out = next.tick(started + 4_000, &four([130, 0, 150, 140]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::None, "retiring", 3));

        // This host's clock steps back 30 s (NTP) while the engine waits out
        // its scale-in window or for the nodes it asked for.
        let mut bench = Bench::deployment();
        bench.tick(100_000, &four(LOW));
        let out = bench.tick(70_000, &four(LOW));
        assert_eq!(out.code, "scale_in_window", "{}", out.decision.reason);
        let mut bench = Bench::deployment();
        assert_eq!(bench.tick(100_000, &four([850, 500, 500, 500])).decision.desired_replicas, 5);
        let out = bench.tick(70_000, &four([850, 500, 500, 500]));
        assert_eq!(summary(&out), (Action::Hold, Urgency::Moderate, "waiting_for_nodes", 5), "{}", out.decision.reason);
    }
}
