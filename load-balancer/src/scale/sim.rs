//! The replay harness: heartbeat series through the engine on a virtual
//! clock, giving the decision timeline.
//!
//! - [`replay`] is open loop: a recorded (or written-by-hand) series of
//!   heartbeats, decisions do not change it.
//! - [`Simulation`] is closed loop: a load curve spread over simulated socket
//!   nodes that start, drain and stop as the decisions and a model HPA say,
//!   so a test sees what the fleet would have done.

use std::collections::BTreeMap;

use rtc_core::{Action, Decision, Heartbeat, NodeState};
use serde::Serialize;

use super::config::ScaleConfig;
use super::engine::{Engine, Outcome};
use crate::actuate::{DeletionRank, WorkloadKind, replicaset_victim};
use crate::fleet::Fleet;

/// A heartbeat with quiet defaults (capacity 1000, nothing connected).
pub fn heartbeat(node: &str, seq: u64, sent_at_ms: u64, state: NodeState) -> Heartbeat {
    Heartbeat {
        v: rtc_core::CONTRACT_VERSION,
        node_id: node.into(),
        url: format!("ws://{node}/ws"),
        state,
        seq,
        sent_at_ms,
        assignment_epoch: 0,
        connections: 0,
        capacity: 1000,
        cpu: 0.05,
        memory: 0.15,
        mps_in: 0.0,
        mps_out: 0.0,
        p95_latency_ms: 5.0,
        kafka_lag: 0,
        partition_connections: None,
    }
}

/// One tick of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub decision: Decision,
    pub code: &'static str,
    pub excluded: Vec<String>,
    pub mark: Vec<String>,
    pub live: u32,
    pub serving: u32,
    pub connections_fraction: f64,
    pub max_connections_fraction: f64,
}

impl Step {
    fn new(at_ms: u64, out: Outcome) -> Self {
        Self {
            at_ms,
            code: out.code,
            excluded: out.excluded.into_iter().collect(),
            mark: out.mark,
            live: out.inputs.live,
            serving: out.inputs.serving,
            connections_fraction: out.inputs.connections_fraction,
            max_connections_fraction: out.inputs.max_connections_fraction,
            decision: out.decision,
        }
    }

    /// `t=  12s scale_out  4 ->  8 critical connections`
    pub fn line(&self) -> String {
        let d = &self.decision;
        format!(
            "t={:>6}s {:<9} {:>3} -> {:<3} {:<8} {:<18} serving {:>3} conn {:.2} max {:.2}",
            self.at_ms / 1000,
            d.action.as_str(),
            d.current_replicas,
            d.desired_replicas,
            d.urgency.as_str(),
            self.code,
            self.serving,
            self.connections_fraction,
            self.max_connections_fraction
        )
    }
}

/// Ticks of a timeline that changed the desired count.
pub fn changes(timeline: &[Step]) -> Vec<&Step> {
    timeline.iter().filter(|s| s.decision.action != Action::Hold).collect()
}

/// Open loop: feeds `heartbeats` (received time, heartbeat; in time order)
/// and decides every decision interval until `until_ms`.
pub fn replay(
    config: ScaleConfig,
    kind: WorkloadKind,
    heartbeats: impl IntoIterator<Item = (u64, Heartbeat)>,
    heartbeat_interval_ms: u64,
    until_ms: u64,
) -> Vec<Step> {
    let tick = config.decision_interval_ms;
    let mut fleet = Fleet::new(heartbeat_interval_ms, config.scale_in_window_ms.max(config.trend_window_ms));
    let mut engine = Engine::new(config, kind);
    let mut series = heartbeats.into_iter().peekable();
    let mut timeline = Vec::new();
    let mut now = 0;
    while now <= until_ms {
        while let Some((at, _)) = series.peek()
            && *at <= now
        {
            let (at, hb) = series.next().expect("peeked");
            let _ = fleet.observe(hb, at);
        }
        timeline.push(Step::new(now, engine.decide(&fleet, now)));
        now += tick;
    }
    timeline
}

/// Load (connected users wanting service) at a time, in milliseconds.
pub type LoadCurve = Box<dyn Fn(u64) -> f64>;

/// A closed-loop run: nodes of `capacity` users, `startup_ms` from being
/// asked for to ready, heartbeats every `heartbeat_ms`.
pub struct Simulation {
    pub config: ScaleConfig,
    pub kind: WorkloadKind,
    pub capacity: u64,
    pub startup_ms: u64,
    pub heartbeat_ms: u64,
    pub initial_nodes: u32,
    pub load: LoadCurve,
}

struct Pod {
    /// When its process is up (heartbeats `starting`) and ready.
    up_ms: u64,
    ready_ms: u64,
    seq: u64,
    marked: bool,
    connections: u64,
}

/// A pod removed by the model HPA, and who was still on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Removal {
    pub at_ms: u64,
    pub pod: String,
    pub connections: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub timeline: Vec<Step>,
    pub removals: Vec<Removal>,
    /// Users above the serving nodes' capacity, summed over heartbeats.
    pub unserved_user_seconds: f64,
}

impl Simulation {
    pub fn run(&self, until_ms: u64) -> Report {
        assert_eq!(self.config.decision_interval_ms % self.heartbeat_ms, 0, "decisions on heartbeat ticks");
        let mut fleet = Fleet::new(self.heartbeat_ms, self.config.scale_in_window_ms.max(self.config.trend_window_ms));
        let mut engine = Engine::new(self.config.clone(), self.kind);
        let mut pods: BTreeMap<u32, Pod> = BTreeMap::new();
        let mut next_ordinal = 0;
        let mut spec = self.initial_nodes;
        let mut report = Report::default();
        let mut excluded: Vec<String> = Vec::new();
        let name = |ordinal: u32| format!("socket-{ordinal}");
        let mut now = 0;
        while now <= until_ms {
            // The workload controller: create or delete pods to match spec.
            while (pods.len() as u32) < spec {
                // The first pods are there from the start.
                let (up_ms, ready_ms) =
                    if now == 0 { (0, 0) } else { (now + self.startup_ms / 2, now + self.startup_ms) };
                let ordinal = if self.kind == WorkloadKind::StatefulSet { pods.len() as u32 } else { next_ordinal };
                next_ordinal = next_ordinal.max(ordinal) + 1;
                pods.insert(ordinal, Pod { up_ms, ready_ms, seq: 0, marked: false, connections: 0 });
            }
            while (pods.len() as u32) > spec {
                let victim = self.deletion_victim(&pods, now);
                let pod = pods.remove(&victim).expect("victim exists");
                report.removals.push(Removal { at_ms: now, pod: name(victim), connections: pod.connections });
            }
            // Users spread evenly over serving pods, up to their capacity.
            let serving: Vec<u32> = pods
                .iter()
                .filter(|(o, p)| now >= p.ready_ms && !excluded.contains(&name(**o)))
                .map(|(o, _)| *o)
                .collect();
            let load = (self.load)(now).max(0.0);
            let share = if serving.is_empty() { 0 } else { (load / serving.len() as f64).round() as u64 };
            let per_pod = share.min(self.capacity);
            let room = (self.capacity * serving.len() as u64) as f64;
            report.unserved_user_seconds += (load - room).max(0.0) * self.heartbeat_ms as f64 / 1000.0;
            for (ordinal, pod) in pods.iter_mut() {
                if now < pod.up_ms {
                    continue;
                }
                pod.connections = if serving.contains(ordinal) { per_pod } else { 0 };
                pod.seq += 1;
                let state = if now >= pod.ready_ms { NodeState::Ready } else { NodeState::Starting };
                let _ = fleet.observe(self.node_heartbeat(&name(*ordinal), pod, now, state), now);
            }
            if now % self.config.decision_interval_ms == 0 {
                let out = engine.decide(&fleet, now);
                for victim in &out.mark {
                    if let Some(pod) =
                        victim.strip_prefix("socket-").and_then(|o| o.parse().ok()).and_then(|o: u32| pods.get_mut(&o))
                    {
                        pod.marked = true;
                    }
                }
                excluded = out.excluded.iter().cloned().collect();
                // The model HPA: exactly the desired count, unless within
                // its tolerance.
                let desired = out.decision.desired_replicas;
                if super::engine::hpa_honours(spec, desired, self.config.hpa_tolerance) {
                    spec = desired;
                }
                report.timeline.push(Step::new(now, out));
            }
            now += self.heartbeat_ms;
        }
        report
    }

    /// Which pod the workload controller deletes: the highest ordinal for a
    /// StatefulSet; for a Deployment the ReplicaSet's ranking (a starting
    /// pod, then a marked victim, then the newest).
    fn deletion_victim(&self, pods: &BTreeMap<u32, Pod>, now: u64) -> u32 {
        let last = *pods.keys().next_back().expect("pods to delete");
        if self.kind == WorkloadKind::StatefulSet {
            return last;
        }
        let rank = |p: &Pod| DeletionRank {
            running: now >= p.up_ms,
            ready: now >= p.ready_ms,
            lowest_cost: p.marked,
            ready_since_ms: p.ready_ms,
            created_ms: p.ready_ms.saturating_sub(self.startup_ms),
        };
        replicaset_victim(pods.iter().map(|(o, p)| (*o, rank(p)))).unwrap_or(last)
    }

    /// The node's figures from its share of users: CPU and the [`strain`]
    /// of its utilisation.
    fn node_heartbeat(&self, id: &str, pod: &Pod, now: u64, state: NodeState) -> Heartbeat {
        let util = pod.connections as f64 / self.capacity as f64;
        let mut hb = heartbeat(id, pod.seq, now, state);
        hb.capacity = self.capacity;
        hb.connections = pod.connections;
        hb.cpu = (0.05 + 0.7 * util).min(1.0);
        hb.mps_out = pod.connections as f64 * 0.5;
        strain(&mut hb, util, util);
        hb
    }
}

/// A simulated node's symptoms of load, as fractions of its capacity:
/// memory grows with the users it serves; P95 latency grows sharply as the
/// users wanting it near its capacity, and Kafka lag builds past 95 %.
pub fn strain(hb: &mut Heartbeat, served: f64, wanted: f64) {
    hb.memory = (0.15 + 0.4 * served).min(1.0);
    hb.p95_latency_ms = 8.0 / (1.0 - wanted.min(0.97));
    hb.kafka_lag = if wanted > 0.95 { ((wanted - 0.95) * 200_000.0) as u64 } else { 0 };
}
