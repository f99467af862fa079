//! The one cluster every policy is judged on: socket pods that take
//! [`ClusterArgs::startup_ms`] from being asked for to serving, users spread
//! over Kafka partitions, and the real assignment engine deciding which node
//! owns each partition, so who moves when nodes join or leave is what rtc
//! would do.
//!
//! A policy's new replica count creates or deletes pods at once
//! ([`Cluster::apply`]; for a Deployment the ReplicaSet picks the victim, see
//! [`replicaset_victim`]). The users of a deleted pod that still owned
//! partitions are dropped and wait [`ClusterArgs::reconnect_ms`] before they
//! connect elsewhere.
//!
//! Every second [`Cluster::step`]:
//! 1. reassigns partitions when the serving nodes change; users of a moved
//!    partition reconnect within [`ClusterArgs::move_ms`];
//! 2. routes each partition's users to its owner, up to the node's capacity,
//!    and tallies the figures;
//! 3. shows the policy what a real one would see ([`View`]).

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use rtc_core::{Assignment, Heartbeat, NodeState, partition_for_key};

use super::figures::Tally;
use super::traces::Sample;
use crate::actuate::{DeletionRank, replicaset_victim};
use crate::assign::{Balance, BalanceArgs, LiveNode, LoadPacer, assign_balanced};
use crate::scale::sim::{heartbeat, strain};

/// The cluster model's parameters.
#[derive(Debug, Clone, Args, PartialEq)]
pub struct ClusterArgs {
    /// Time from a pod being asked for to it serving (it heartbeats
    /// `starting` from half of it).
    #[arg(long = "node-startup-ms", env = "RTC_REPORT_NODE_STARTUP_MS", default_value_t = 30_000)]
    pub startup_ms: u64,
    /// Connections one node serves; more are refused (`at_capacity`).
    #[arg(long = "node-capacity", env = "RTC_REPORT_NODE_CAPACITY", default_value_t = 1000)]
    pub capacity: u64,
    /// A node's CPU (fraction of its request) with nobody connected.
    #[arg(long = "cpu-idle", env = "RTC_REPORT_CPU_IDLE", default_value_t = 0.05)]
    pub cpu_idle: f64,
    /// CPU each connection adds (1000 connections: 0.75).
    #[arg(long = "cpu-per-connection", env = "RTC_REPORT_CPU_PER_CONNECTION", default_value_t = 0.00075)]
    pub cpu_per_connection: f64,
    /// CPU each message per second delivered adds (200/s: 0.2).
    #[arg(long = "cpu-per-msg", env = "RTC_REPORT_CPU_PER_MSG", default_value_t = 0.001)]
    pub cpu_per_msg: f64,
    /// Partitions of the topic users are hashed to.
    #[arg(long = "partitions", env = "RTC_REPORT_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub partitions: u32,
    /// User ids (`user-0`, …) hashed to partitions to give each partition
    /// its share of the users (unless `--zipf`).
    #[arg(long = "population", env = "RTC_REPORT_POPULATION", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub population: u32,
    /// Skewed partitions instead: the k-th busiest gets a share of the
    /// users proportional to 1/k^S (0: hashed, even).
    #[arg(long = "zipf", env = "RTC_REPORT_ZIPF", default_value_t = 0.0)]
    pub zipf: f64,
    /// How the assignment engine balances (rtc's load balancer does the
    /// same for every policy).
    #[command(flatten)]
    pub balance: BalanceArgs,
    /// How long a user dropped by a pod deleted undrained is away: the
    /// client notices, backs off and reconnects.
    #[arg(long = "reconnect-ms", env = "RTC_REPORT_RECONNECT_MS", default_value_t = 5_000)]
    pub reconnect_ms: u64,
    /// How long a user told to move (its partition changed owner) is away.
    #[arg(long = "move-ms", env = "RTC_REPORT_MOVE_MS", default_value_t = 200)]
    pub move_ms: u64,
    /// KEDA's polling interval: how fresh the metric the plain HPA policies
    /// act on is.
    #[arg(long = "keda-polling-ms", env = "RTC_REPORT_KEDA_POLLING_MS", default_value_t = 30_000)]
    pub keda_polling_ms: u64,
    /// The HPA controller's sync period (every policy but threshold-steps).
    #[arg(long = "hpa-sync-ms", env = "RTC_REPORT_HPA_SYNC_MS", default_value_t = 15_000)]
    pub hpa_sync_ms: u64,
    /// How often the threshold-steps rules run.
    #[arg(long = "steps-interval-ms", env = "RTC_REPORT_STEPS_INTERVAL_MS", default_value_t = 30_000)]
    pub steps_interval_ms: u64,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: ClusterArgs,
        }
        <Defaults as clap::Parser>::parse_from(["defaults"]).args
    }
}

impl ClusterArgs {
    /// Each partition's share of the users: the population hashed with
    /// the producers' partitioner, or Zipf shares.
    pub fn partition_weights(&self) -> Vec<f64> {
        if self.zipf > 0.0 {
            return crate::ring_report::zipf_shares(self.partitions, self.zipf);
        }
        let mut counts = vec![0u64; self.partitions as usize];
        for i in 0..self.population {
            counts[partition_for_key(format!("user-{i}").as_bytes(), self.partitions) as usize] += 1;
        }
        counts.into_iter().map(|c| c as f64 / f64::from(self.population)).collect()
    }
}

/// What a policy sees each second: the heartbeats of the pods that are up
/// (`starting` until ready; a node does not know it is being drained), and
/// the workload's replica count.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub now_ms: u64,
    pub replicas: u32,
    pub pods: Vec<Heartbeat>,
}

/// What a policy does this second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Command {
    /// The workload's new replica count.
    pub replicas: Option<u32>,
    /// Nodes that must own no partitions (rtc's drain).
    pub excluded: Option<BTreeSet<String>>,
    /// Pods given the lowest deletion cost, and pods that lose it.
    pub mark: Vec<String>,
    pub unmark: Vec<String>,
}

struct Pod {
    name: String,
    created_ms: u64,
    up_ms: u64,
    ready_ms: u64,
    marked: bool,
}

/// The simulated cluster, one policy's copy.
pub struct Cluster<'a> {
    args: &'a ClusterArgs,
    weights: &'a [f64],
    pods: BTreeMap<u32, Pod>,
    next_ordinal: u32,
    replicas: u32,
    excluded: BTreeSet<String>,
    assignment: Option<Assignment>,
    /// The live nodes the assignment was computed for.
    assigned_for: Vec<LiveNode>,
    pacer: LoadPacer,
    /// When the users of each partition are back after a drop or a move.
    back_at_ms: Vec<u64>,
    /// The users of the last second.
    users: f64,
    pub tally: Tally,
}

impl<'a> Cluster<'a> {
    /// `replicas` pods, ready at time 0.
    pub fn new(args: &'a ClusterArgs, weights: &'a [f64], replicas: u32) -> Self {
        let mut cluster = Self {
            args,
            weights,
            pods: BTreeMap::new(),
            next_ordinal: 0,
            replicas,
            excluded: BTreeSet::new(),
            assignment: None,
            assigned_for: Vec::new(),
            pacer: LoadPacer::default(),
            back_at_ms: vec![0; weights.len()],
            users: 0.0,
            tally: Tally::default(),
        };
        for _ in 0..replicas {
            cluster.create(0, 0);
        }
        cluster
    }

    fn create(&mut self, now_ms: u64, startup_ms: u64) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let pod = Pod {
            name: format!("socket-{ordinal}"),
            created_ms: now_ms,
            up_ms: now_ms + startup_ms / 2,
            ready_ms: now_ms + startup_ms,
            marked: false,
        };
        self.pods.insert(ordinal, pod);
    }

    /// Applies a policy's command (takes effect on the next step).
    pub fn apply(&mut self, now_ms: u64, command: Command) {
        if let Some(replicas) = command.replicas
            && replicas != self.replicas
        {
            self.tally.scale_action(now_ms, self.replicas, replicas);
            self.replicas = replicas;
            // The workload controller acts at once: a pod asked for now is
            // ready one start-up from now.
            self.scale_workload(now_ms);
        }
        if let Some(excluded) = command.excluded {
            self.excluded = excluded;
        }
        for pod in self.pods.values_mut() {
            if command.mark.contains(&pod.name) {
                pod.marked = true;
            }
            if command.unmark.contains(&pod.name) {
                pod.marked = false;
            }
        }
    }

    /// One second of traffic; returns what the policy sees.
    pub fn step(&mut self, now_ms: u64, sample: Sample) -> View {
        let users = sample.users.max(0.0);
        self.users = users;
        self.reassign(now_ms, users);

        // Route: each partition's users to its owner, up to capacity.
        let cap = self.args.capacity as f64;
        let mut demand: BTreeMap<&str, (f64, BTreeMap<u32, u64>)> = BTreeMap::new();
        let (mut unowned, mut away) = (0.0, 0.0);
        for (p, weight) in self.weights.iter().enumerate() {
            let here = users * weight;
            if now_ms < self.back_at_ms[p] {
                // Away for this part of the second (a move is shorter).
                away += here * ((self.back_at_ms[p] - now_ms) as f64 / 1000.0).min(1.0);
                continue;
            }
            match self.assignment.as_ref().and_then(|a| a.owner(p as u32)) {
                Some(owner) => {
                    let slot = demand.entry(owner.id.as_str()).or_default();
                    slot.0 += here;
                    slot.1.insert(p as u32, here.round() as u64);
                }
                None => unowned += here,
            }
        }
        let over: f64 = demand.values().map(|(d, _)| (d - cap).max(0.0)).sum();
        let hottest = demand.values().map(|(d, _)| d / cap).fold(0.0, f64::max);
        let serving = self.pods.values().filter(|p| now_ms >= p.ready_ms && !self.excluded.contains(&p.name)).count();
        self.tally.second(super::figures::Second {
            users,
            ready_capacity: serving as f64 * cap,
            over_capacity: over + unowned,
            away,
            overloaded: hottest > 0.9,
            pods: self.pods.len() as u32,
        });

        let pods = self
            .pods
            .values()
            .filter(|p| now_ms >= p.up_ms)
            .map(|p| {
                let (wanted, partitions) = demand.remove(p.name.as_str()).unwrap_or_default();
                let connections = wanted.min(cap);
                let share = if users > 0.0 { connections / users } else { 0.0 };
                let state = if now_ms < p.ready_ms { NodeState::Starting } else { NodeState::Ready };
                let mut hb = heartbeat(&p.name, now_ms / 1000 + 1, now_ms, state);
                hb.capacity = self.args.capacity;
                hb.connections = connections.round() as u64;
                hb.mps_out = sample.msgs_per_s * share;
                hb.cpu = self.args.cpu_idle
                    + self.args.cpu_per_connection * connections
                    + self.args.cpu_per_msg * hb.mps_out;
                strain(&mut hb, connections / cap, wanted / cap);
                hb.partition_connections = Some(partitions);
                hb
            })
            .collect();
        View { now_ms, replicas: self.replicas, pods }
    }

    fn state(&self, pod: &Pod, now_ms: u64) -> NodeState {
        if now_ms < pod.ready_ms {
            NodeState::Starting
        } else if self.excluded.contains(&pod.name) {
            NodeState::Draining
        } else {
            NodeState::Ready
        }
    }

    /// The workload controller: pods to match the replica count.
    fn scale_workload(&mut self, now_ms: u64) {
        let users = self.users;
        while (self.pods.len() as u32) < self.replicas {
            self.create(now_ms, self.args.startup_ms);
        }
        while (self.pods.len() as u32) > self.replicas {
            let rank = |p: &Pod| DeletionRank {
                running: now_ms >= p.up_ms,
                ready: now_ms >= p.ready_ms,
                lowest_cost: p.marked,
                ready_since_ms: p.ready_ms,
                created_ms: p.created_ms,
            };
            let Some(victim) = replicaset_victim(self.pods.iter().map(|(o, p)| (*o, rank(p)))) else { break };
            let Some(pod) = self.pods.remove(&victim) else { break };
            // Whoever is still on it is dropped, and back after reconnecting.
            let owned = self.assignment.as_ref().map(|a| a.partitions_of(&pod.name)).unwrap_or_default();
            for p in owned {
                let p = p as usize;
                if now_ms >= self.back_at_ms[p] {
                    self.tally.dropped(users * self.weights[p], self.args.reconnect_ms);
                    self.back_at_ms[p] = now_ms + self.args.reconnect_ms;
                }
            }
        }
    }

    /// Reassigns partitions when the live nodes or their states changed,
    /// and when the leader's pacer allows a load rebalance; the users of a
    /// partition that moved between two live nodes move.
    fn reassign(&mut self, now_ms: u64, users: f64) {
        let live: Vec<LiveNode> = self
            .pods
            .values()
            .filter(|p| now_ms >= p.up_ms)
            .map(|p| LiveNode::new(p.name.clone(), format!("ws://{}/ws", p.name), self.state(p, now_ms)))
            .collect();
        let connections: Vec<u64> = self.weights.iter().map(|w| (users * w).round() as u64).collect();
        let balance = self.pacer.balance(&self.args.balance, self.assignment.as_ref(), &live, &connections, now_ms);
        if live == self.assigned_for && self.assignment.is_some() && !matches!(balance, Balance::Load { .. }) {
            return;
        }
        let placement = assign_balanced(self.assignment.as_ref(), &live, self.args.partitions, &connections, balance);
        if live == self.assigned_for && self.assignment.as_ref().is_some_and(|a| a.owners == placement.owners) {
            return;
        }
        let epoch = self.assignment.as_ref().map_or(1, |a| a.epoch + 1);
        let next = placement.into_assignment(epoch, 1);
        if let Some(previous) = &self.assignment {
            let alive: BTreeSet<&str> = live.iter().map(|n| n.id.as_str()).collect();
            for p in 0..self.weights.len() {
                let (old, new) = (previous.owner(p as u32), next.owner(p as u32));
                let moved = matches!((old, new), (Some(o), Some(n)) if o.id != n.id && alive.contains(o.id.as_str()));
                if moved && now_ms >= self.back_at_ms[p] {
                    self.tally.moved(users * self.weights[p], self.args.move_ms);
                    self.back_at_ms[p] = now_ms + self.args.move_ms;
                }
            }
        }
        self.assignment = Some(next);
        self.assigned_for = live;
    }
}
