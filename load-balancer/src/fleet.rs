//! The fleet as the load balancer sees it from heartbeats: a bounded
//! history per node, and which nodes are alive. Pure: time is passed in.

use std::collections::{BTreeMap, VecDeque};

use rtc_core::{Heartbeat, NodeState};

use crate::assign::LiveNode;

/// The figures of one heartbeat that matter over time, as received: the
/// history keeps these (about 90 bytes), not whole heartbeats, so a large
/// fleet's window stays affordable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// When the load balancer received it (its own clock, milliseconds).
    pub received_ms: u64,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub connections: u64,
    pub capacity: u64,
    pub cpu: f64,
    pub memory: f64,
    pub mps_out: f64,
    pub p95_latency_ms: f64,
    pub kafka_lag: u64,
}

impl Reading {
    fn of(hb: &Heartbeat, received_ms: u64) -> Self {
        Self {
            received_ms,
            seq: hb.seq,
            sent_at_ms: hb.sent_at_ms,
            connections: hb.connections,
            capacity: hb.capacity,
            cpu: hb.cpu,
            memory: hb.memory,
            mps_out: hb.mps_out,
            p95_latency_ms: hb.p95_latency_ms,
            kafka_lag: hb.kafka_lag,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    latest: Heartbeat,
    /// Oldest first, at most the history window; never empty.
    pub history: VecDeque<Reading>,
}

impl NodeRecord {
    pub fn latest(&self) -> &Heartbeat {
        &self.latest
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.history.back().map_or(0, |s| s.received_ms)
    }

    /// The readings received at or after `since_ms`, plus the one before
    /// (the value in force at `since_ms`).
    pub fn since(&self, since_ms: u64) -> impl Iterator<Item = &Reading> {
        let first = self.history.partition_point(|r| r.received_ms < since_ms).saturating_sub(1);
        self.history.range(first..)
    }
}

/// Why a heartbeat was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Same or older `seq` than one already seen from that node process
    /// (a replayed or reordered entry).
    Stale,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    dead_after_ms: u64,
    window_ms: u64,
    nodes: BTreeMap<String, NodeRecord>,
}

impl Fleet {
    /// `interval_ms`: the nodes' heartbeat period (dead after 3 missed,
    /// unless [`Self::with_dead_after`] says otherwise); `window_ms`: how
    /// much history to keep per node.
    pub fn new(interval_ms: u64, window_ms: u64) -> Self {
        Self { dead_after_ms: 3 * interval_ms.max(1), window_ms, nodes: BTreeMap::new() }
    }

    /// A node is dead once `dead_after_ms` passed without a heartbeat.
    pub fn with_dead_after(mut self, dead_after_ms: u64) -> Self {
        self.dead_after_ms = dead_after_ms.max(1);
        self
    }

    pub fn dead_after_ms(&self) -> u64 {
        self.dead_after_ms
    }

    /// Takes one validated heartbeat received at `now_ms`. A node that
    /// restarted (its `seq` starts again) is taken as new.
    pub fn observe(&mut self, heartbeat: Heartbeat, now_ms: u64) -> Result<(), Rejected> {
        let dead_after_ms = self.dead_after_ms();
        let reading = Reading::of(&heartbeat, now_ms);
        let Some(record) = self.nodes.get_mut(&heartbeat.node_id) else {
            let id = heartbeat.node_id.clone();
            self.nodes.insert(id, NodeRecord { latest: heartbeat, history: VecDeque::from([reading]) });
            return Ok(());
        };
        let last = &record.latest;
        let restarted = heartbeat.seq <= 1 && last.seq > 1 || heartbeat.sent_at_ms > last.sent_at_ms + dead_after_ms;
        if heartbeat.seq <= last.seq && !restarted {
            return Err(Rejected::Stale);
        }
        if restarted {
            record.history.clear();
        }
        record.latest = heartbeat;
        record.history.push_back(reading);
        let oldest_kept = now_ms.saturating_sub(self.window_ms);
        while record.history.len() > 1 && record.history.front().is_some_and(|s| s.received_ms < oldest_kept) {
            record.history.pop_front();
        }
        Ok(())
    }

    /// Forgets nodes dead for longer than the history window; returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let horizon = self.dead_after_ms() + self.window_ms;
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.last_seen_ms()) > horizon)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.nodes.remove(id);
        }
        gone
    }

    pub fn is_alive(&self, id: &str, now_ms: u64) -> bool {
        self.nodes.get(id).is_some_and(|r| now_ms.saturating_sub(r.last_seen_ms()) < self.dead_after_ms())
    }

    /// Live nodes with the state they last reported, sorted by id: the
    /// assignment engine's input.
    pub fn live(&self, now_ms: u64) -> Vec<LiveNode> {
        self.nodes
            .iter()
            .filter(|(id, _)| self.is_alive(id, now_ms))
            .map(|(id, r)| LiveNode::new(id.clone(), r.latest().url.clone(), r.latest().state))
            .collect()
    }

    /// The highest assignment epoch any known node reports having applied
    /// (dead ones too: the epoch they applied is still taken).
    pub fn highest_applied_epoch(&self) -> u64 {
        self.nodes.values().map(|r| r.latest.assignment_epoch).max().unwrap_or(0)
    }

    pub fn record(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    pub fn records(&self) -> impl Iterator<Item = (&String, &NodeRecord)> {
        self.nodes.iter()
    }

    /// Users per partition from the live nodes' latest heartbeats (the
    /// engine moves the emptiest partitions first).
    pub fn partition_connections(&self, partitions: u32, now_ms: u64) -> Vec<u64> {
        let mut out = vec![0u64; partitions as usize];
        for (id, r) in &self.nodes {
            if !self.is_alive(id, now_ms) {
                continue;
            }
            for (p, n) in r.latest().partition_connections.iter().flatten() {
                if let Some(slot) = out.get_mut(*p as usize) {
                    *slot += n;
                }
            }
        }
        out
    }

    /// Counts of live nodes by reported state.
    pub fn count_by_state(&self, now_ms: u64) -> BTreeMap<NodeState, usize> {
        let mut out = BTreeMap::new();
        for node in self.live(now_ms) {
            *out.entry(node.state).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: &str, seq: u64, sent_at_ms: u64, state: NodeState) -> Heartbeat {
        Heartbeat {
            connections: 10,
            capacity: 100,
            partition_connections: Some(BTreeMap::from([(1, 4), (2, 6)])),
            ..crate::scale::sim::heartbeat(node, seq, sent_at_ms, state)
        }
    }

    #[test]
    fn nodes_die_after_three_missed_intervals() {
        let mut fleet = Fleet::new(1000, 10_000);
        fleet.observe(hb("a", 1, 0, NodeState::Ready), 0).unwrap();
        fleet.observe(hb("b", 1, 0, NodeState::Starting), 0).unwrap();
        assert_eq!(fleet.live(2_999).len(), 2);
        assert!(fleet.is_alive("a", 2_999));
        assert!(!fleet.is_alive("a", 3_000), "3 intervals without a heartbeat");
        fleet.observe(hb("a", 2, 2_500, NodeState::Ready), 2_500).unwrap();
        let live = fleet.live(3_000);
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].id.as_str(), live[0].state), ("a", NodeState::Ready));
        assert_eq!(fleet.count_by_state(3_000), BTreeMap::from([(NodeState::Ready, 1)]));
    }

    #[test]
    fn history_is_bounded_by_the_window_and_stale_entries_are_refused() {
        let mut fleet = Fleet::new(1000, 5_000);
        for i in 1..=20 {
            fleet.observe(hb("a", i, i * 1000, NodeState::Ready), i * 1000).unwrap();
        }
        let history = &fleet.record("a").unwrap().history;
        assert_eq!(history.len(), 6, "samples within 5 s of the newest");
        assert_eq!(history.front().unwrap().seq, 15);
        assert_eq!(fleet.observe(hb("a", 20, 20_000, NodeState::Ready), 20_100), Err(Rejected::Stale));
        assert_eq!(fleet.observe(hb("a", 7, 20_000, NodeState::Ready), 20_100), Err(Rejected::Stale));
    }

    #[test]
    fn a_restarted_node_starts_a_new_history() {
        let mut fleet = Fleet::new(1000, 60_000);
        for i in 1..=5 {
            fleet.observe(hb("a", i, i * 1000, NodeState::Ready), i * 1000).unwrap();
        }
        fleet.observe(hb("a", 1, 9_000, NodeState::Starting), 9_000).unwrap();
        let record = fleet.record("a").unwrap();
        assert_eq!(record.history.len(), 1);
        assert_eq!(record.latest().state, NodeState::Starting);
    }

    #[test]
    fn dead_nodes_are_forgotten_after_the_window_and_partitions_sum() {
        let mut fleet = Fleet::new(1000, 5_000);
        fleet.observe(hb("a", 1, 0, NodeState::Ready), 0).unwrap();
        fleet.observe(hb("b", 1, 0, NodeState::Ready), 0).unwrap();
        assert_eq!(fleet.partition_connections(4, 100), vec![0, 8, 12, 0]);
        fleet.observe(hb("b", 2, 7_000, NodeState::Ready), 7_000).unwrap();
        assert_eq!(fleet.partition_connections(4, 7_000), vec![0, 4, 6, 0], "a is dead");
        assert_eq!(fleet.expire(7_000), Vec::<String>::new());
        assert_eq!(fleet.expire(8_001), vec!["a".to_owned()]);
        assert!(fleet.record("a").is_none());
    }
}
