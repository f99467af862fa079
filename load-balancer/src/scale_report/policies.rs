//! The scaling policies compared, each seeing only what it would see in a
//! real cluster ([`View`]) and answering with a [`Command`].
//!
//! - `rtc`: the real engine on the nodes' heartbeats, its desired count
//!   pushed to an HPA with the `deploy/k8s` behaviour; it drains before it
//!   removes.
//! - `hpa-cpu`: the HPA on average CPU (70 %), Kubernetes' default behaviour.
//! - `hpa-connections`: the HPA on average connections per pod (70 % of
//!   capacity, through a KEDA trigger), Kubernetes' default behaviour.
//! - `threshold-steps`: the usual hand-written rules, applied to the workload
//!   directly.
//!
//! The plain HPA policies act on a metric KEDA refreshes every
//! `--keda-polling-ms`; every HPA reconciles every `--hpa-sync-ms`.

use std::collections::VecDeque;

use rtc_core::hpa::{Behavior, Hpa, HpaSpec, ScalingPolicy, ScalingRules, SelectPolicy, resource_utilization_replicas};
use rtc_core::{Heartbeat, NodeState};

use super::cluster::{ClusterArgs, Command, View};
use crate::actuate::WorkloadKind;
use crate::fleet::Fleet;
use crate::scale::{Engine, ScaleConfig};

/// The policies, in table order.
pub const POLICIES: [&str; 4] = ["rtc", "hpa-cpu", "hpa-connections", "threshold-steps"];

/// The HPA target of the plain HPA policies: 70 % (of the CPU request, or
/// of a node's capacity in connections).
pub const HPA_TARGET: f64 = 0.70;

pub trait Policy {
    fn observe(&mut self, view: &View) -> Command;
}

/// A policy by its name in [`POLICIES`].
pub fn by_name(name: &str, config: &ScaleConfig, cluster: &ClusterArgs) -> Option<Box<dyn Policy>> {
    let default_hpa = || Hpa::new(HpaSpec::new(config.min_replicas, config.max_replicas));
    let polled = |metric| Polled { metric, hpa: default_hpa(), cached: None, args: cluster.clone() };
    Some(match name {
        "rtc" => Box::new(Rtc::new(config, cluster)),
        "hpa-cpu" => Box::new(polled(Metric::Cpu)),
        "hpa-connections" => Box::new(polled(Metric::Connections)),
        "threshold-steps" => Box::new(ThresholdSteps::new(config, cluster)),
        _ => return None,
    })
}

/// The behaviour `deploy/k8s/base/scaledobject.yaml` gives the HPA in front
/// of rtc: no stabilization windows (the engine already waited), up to 10
/// pods or a doubling per 15 s, down up to 5 drained pods per 15 s,
/// tolerance 1 % (`deploy/check` holds the two equal).
pub fn rtc_deploy_behavior() -> Behavior {
    let rules = |policies| ScalingRules {
        stabilization_window_seconds: 0,
        select_policy: SelectPolicy::Max,
        policies,
        tolerance: RTC_DEPLOY_TOLERANCE,
    };
    Behavior {
        scale_up: rules(vec![ScalingPolicy::pods(10, 15), ScalingPolicy::percent(100, 15)]),
        scale_down: rules(vec![ScalingPolicy::pods(5, 15)]),
    }
}

/// `deploy/k8s`'s HPA tolerance, which the load balancer's
/// `RTC_HPA_TOLERANCE` must equal.
pub const RTC_DEPLOY_TOLERANCE: f64 = 0.01;

fn due(now_ms: u64, every_ms: u64) -> bool {
    every_ms > 0 && now_ms.is_multiple_of(every_ms)
}

/// rtc: heartbeats into the engine every second, a decision every decision
/// interval, pushed at once to the HPA that reconciles on its sync period.
struct Rtc {
    engine: Engine,
    fleet: Fleet,
    hpa: Hpa,
    decision_ms: u64,
    sync_ms: u64,
    desired: Option<u32>,
}

impl Rtc {
    fn new(config: &ScaleConfig, cluster: &ClusterArgs) -> Self {
        let config = ScaleConfig { hpa_tolerance: RTC_DEPLOY_TOLERANCE, ..config.clone() };
        let spec = HpaSpec {
            min_replicas: config.min_replicas,
            max_replicas: config.max_replicas,
            behavior: rtc_deploy_behavior(),
        };
        Self {
            fleet: Fleet::new(1000, config.scale_in_window_ms.max(config.trend_window_ms)),
            hpa: Hpa::new(spec),
            decision_ms: config.decision_interval_ms,
            sync_ms: cluster.hpa_sync_ms,
            engine: Engine::new(config, WorkloadKind::Deployment),
            desired: None,
        }
    }
}

impl Policy for Rtc {
    fn observe(&mut self, view: &View) -> Command {
        let now = view.now_ms;
        for hb in &view.pods {
            let _ = self.fleet.observe(hb.clone(), now);
        }
        let mut command = Command::default();
        if due(now, self.decision_ms) {
            let out = self.engine.decide(&self.fleet, now);
            self.desired = Some(out.decision.desired_replicas);
            command.excluded = Some(out.excluded);
            command.mark = out.mark;
            command.unmark = out.unmark;
        }
        if due(now, self.sync_ms)
            && let Some(desired) = self.desired
        {
            command.replicas = Some(self.hpa.reconcile(now, view.replicas, f64::from(desired), 1.0));
        }
        command
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Cpu,
    Connections,
}

/// What KEDA last read: each ready pod's CPU and the pods not ready, or
/// the connections in all.
#[derive(Debug, Clone)]
struct Reading {
    ready_cpu: Vec<f64>,
    unready: u32,
    connections: f64,
}

/// The HPA on a polled metric, Kubernetes' default behaviour.
struct Polled {
    metric: Metric,
    hpa: Hpa,
    cached: Option<Reading>,
    args: ClusterArgs,
}

impl Policy for Polled {
    fn observe(&mut self, view: &View) -> Command {
        let now = view.now_ms;
        if due(now, self.args.keda_polling_ms) || self.cached.is_none() {
            let ready = view.pods.iter().filter(|p| p.state != NodeState::Starting);
            self.cached = Some(Reading {
                ready_cpu: ready.clone().map(|p| p.cpu).collect(),
                unready: view.replicas.saturating_sub(ready.clone().count() as u32),
                connections: view.pods.iter().map(|p| p.connections as f64).sum(),
            });
        }
        let mut command = Command::default();
        let Some(reading) = self.cached.as_ref().filter(|_| due(now, self.args.hpa_sync_ms)) else { return command };
        let replicas = match self.metric {
            Metric::Cpu => {
                let (up, down) = self.hpa.tolerances();
                let target = (HPA_TARGET * 100.0).round() as u32;
                self.hpa
                    .reconcile_with(now, view.replicas, |current| {
                        Ok(resource_utilization_replicas(
                            current,
                            &reading.ready_cpu,
                            reading.unready,
                            target,
                            up,
                            down,
                        ))
                    })
                    .replicas
            }
            Metric::Connections => {
                let target = HPA_TARGET * self.args.capacity as f64;
                self.hpa.reconcile(now, view.replicas, reading.connections, target)
            }
        };
        command.replicas = Some(replicas);
        command
    }
}

/// The hand-written rules: per-node thresholds give an urgency, and the
/// urgency a step; scale-in removes a node, without a drain, after 5 calm
/// minutes.
struct ThresholdSteps {
    interval_ms: u64,
    min: u32,
    max: u32,
    latency_slo_ms: f64,
    /// Scale-outs within the last 3 minutes.
    recent_outs: VecDeque<u64>,
    calm_since_ms: Option<u64>,
}

/// Scale-outs this close together double the step.
const STEPS_CONSECUTIVE_MS: u64 = 3 * 60 * 1000;
const STEPS_MAX_STEP: u32 = 5;
const STEPS_CALM_MS: u64 = 5 * 60 * 1000;
/// Everything under this fraction (of capacity, CPU, latency objective) is calm.
const STEPS_CALM_BELOW: f64 = 0.5;

impl ThresholdSteps {
    fn new(config: &ScaleConfig, cluster: &ClusterArgs) -> Self {
        Self {
            interval_ms: cluster.steps_interval_ms,
            min: config.min_replicas,
            max: config.max_replicas,
            latency_slo_ms: config.latency_slo_ms,
            recent_outs: VecDeque::new(),
            calm_since_ms: None,
        }
    }

    /// 0 (none) to 3 (critical): the worst of connections (75/85/95 % of
    /// capacity), CPU (70/80/90 %) and P95 latency (1, 1.5, 2 × objective).
    fn urgency(&self, pod: &Heartbeat) -> u32 {
        let level = |value: f64, thresholds: [f64; 3]| thresholds.iter().filter(|t| value >= **t).count() as u32;
        let connections = pod.connections as f64 / pod.capacity.max(1) as f64;
        let slo = self.latency_slo_ms;
        level(connections, [0.75, 0.85, 0.95])
            .max(level(pod.cpu, [0.70, 0.80, 0.90]))
            .max(level(pod.p95_latency_ms, [slo, 1.5 * slo, 2.0 * slo]))
    }

    fn calm(&self, pod: &Heartbeat) -> bool {
        let connections = pod.connections as f64 / pod.capacity.max(1) as f64;
        connections < STEPS_CALM_BELOW
            && pod.cpu < STEPS_CALM_BELOW
            && pod.p95_latency_ms < STEPS_CALM_BELOW * self.latency_slo_ms
    }
}

impl Policy for ThresholdSteps {
    fn observe(&mut self, view: &View) -> Command {
        let now = view.now_ms;
        if !due(now, self.interval_ms) {
            return Command::default();
        }
        let running: Vec<&Heartbeat> = view.pods.iter().filter(|p| p.state != NodeState::Starting).collect();
        self.recent_outs.retain(|at| now.saturating_sub(*at) <= STEPS_CONSECUTIVE_MS);
        let urgency = running.iter().map(|p| self.urgency(p)).max().unwrap_or(0);
        let current = view.replicas;
        let mut replicas = None;
        if urgency > 0 {
            self.calm_since_ms = None;
            let step = (urgency << self.recent_outs.len().min(8)).min(STEPS_MAX_STEP);
            if current < self.max {
                self.recent_outs.push_back(now);
                replicas = Some((current + step).min(self.max));
            }
        } else if running.iter().all(|p| self.calm(p)) {
            let since = *self.calm_since_ms.get_or_insert(now);
            if now - since >= STEPS_CALM_MS && current > self.min {
                replicas = Some(current - 1);
                // A fresh 5 minutes before the next removal.
                self.calm_since_ms = Some(now);
            }
        } else {
            self.calm_since_ms = None;
        }
        Command { replicas, ..Command::default() }
    }
}
