//! What the nodes and the load balancer say in Redis: the heartbeats (pod
//! readiness and the cpu/memory the backup rules use, a stand-in for the
//! Ready condition and metrics-server) and the assignment (which node the
//! load balancer drained).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rtc_core::redis_io::{HeartbeatBatch, HeartbeatCursor};
use rtc_core::{Assignment, ContractError, Document, Heartbeat, NodeState};
use tokio_util::sync::CancellationToken;

use crate::sync::PodSample;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("assignment: {0}")]
    Contract(#[from] ContractError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone)]
struct Seen {
    latest: Heartbeat,
    /// `sent_at_ms` of the newest `ready` heartbeat.
    last_ready_ms: Option<u64>,
}

/// The newest heartbeat of every node seen (pure; fed by [`follow_heartbeats`]).
#[derive(Debug, Default)]
pub struct FleetView {
    nodes: HashMap<String, Seen>,
}

impl FleetView {
    pub fn observe(&mut self, hb: Heartbeat) {
        let ready_at = (hb.state == NodeState::Ready).then_some(hb.sent_at_ms);
        match self.nodes.get_mut(&hb.node_id) {
            Some(seen) => {
                seen.last_ready_ms = seen.last_ready_ms.max(ready_at);
                if hb.sent_at_ms >= seen.latest.sent_at_ms {
                    seen.latest = hb;
                }
            }
            None => {
                self.nodes.insert(hb.node_id.clone(), Seen { latest: hb, last_ready_ms: ready_at });
            }
        }
    }

    /// Whether `id` sent a `ready` heartbeat since `started_at_ms` (a node
    /// id reused by a StatefulSet pod must not inherit its predecessor's).
    pub fn has_been_ready(&self, id: &str, started_at_ms: u64) -> bool {
        self.nodes.get(id).and_then(|s| s.last_ready_ms).is_some_and(|at| at >= started_at_ms)
    }

    /// The pod as the resource metrics see it at `now_ms`: ready when its
    /// newest heartbeat says so, metrics from a heartbeat at most `fresh_ms`
    /// old and sent since the pod started.
    pub fn sample(&self, id: &str, started_at_ms: u64, now_ms: u64, fresh_ms: u64) -> PodSample {
        let current = self
            .nodes
            .get(id)
            .map(|s| &s.latest)
            .filter(|hb| hb.sent_at_ms >= started_at_ms && now_ms.saturating_sub(hb.sent_at_ms) <= fresh_ms);
        PodSample {
            id: id.to_owned(),
            ready: current.is_some_and(|hb| hb.state == NodeState::Ready),
            cpu: current.map(|hb| hb.cpu),
            memory: current.map(|hb| hb.memory),
        }
    }

    /// Forgets nodes that are not pods any more (bounded memory).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|id, _| keep(id));
    }
}

/// Tails the heartbeat stream into `view` until `stop`, reconnecting with
/// backoff while Redis is away. Invalid entries are skipped (and logged).
pub async fn follow_heartbeats(
    client: redis::Client,
    key: String,
    since_ms: u64,
    view: Arc<Mutex<FleetView>>,
    stop: CancellationToken,
) {
    let block = Duration::from_millis(500);
    let mut conn = match rtc_core::redis_io::connection_manager(&client, block + Duration::from_secs(2)) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(error = %e, "heartbeats cannot be read: bad redis settings");
            return;
        }
    };
    let cursor = HeartbeatCursor::since(key, since_ms, 1_000, block);
    let on_batch = |entries: HeartbeatBatch| {
        let mut view = view.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            match entry {
                Ok(hb) => view.observe(hb),
                Err(e) => tracing::debug!(error = %e, "invalid heartbeat skipped"),
            }
        }
    };
    let on_error = |e: &redis::RedisError| tracing::debug!(error = %e, "reading heartbeats failed");
    cursor.follow(&mut conn, stop.cancelled(), on_batch, on_error).await;
}

/// The nodes the current assignment lists as `draining` (none without an
/// assignment).
pub async fn draining_nodes(
    conn: &mut ConnectionManager,
    key: &str,
    timeout: Duration,
) -> Result<BTreeSet<String>, FleetError> {
    let raw: Option<Vec<u8>> =
        tokio::time::timeout(timeout, conn.get(key)).await.map_err(|_| FleetError::Timeout(timeout))??;
    Ok(match raw {
        Some(raw) => draining_in(&Assignment::from_json(&raw)?),
        None => BTreeSet::new(),
    })
}

pub fn draining_in(assignment: &Assignment) -> BTreeSet<String> {
    assignment.nodes.iter().filter(|n| n.state == NodeState::Draining).map(|n| n.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, state: NodeState, sent_at_ms: u64, cpu: f64) -> Heartbeat {
        Heartbeat {
            v: 1,
            node_id: id.into(),
            url: "ws://127.0.0.1:1/ws".into(),
            state,
            seq: sent_at_ms,
            sent_at_ms,
            assignment_epoch: 0,
            connections: 0,
            capacity: 100,
            cpu,
            memory: 0.2,
            mps_in: 0.0,
            mps_out: 0.0,
            p95_latency_ms: 0.0,
            kafka_lag: 0,
            partition_connections: None,
        }
    }

    #[test]
    fn readiness_counts_only_since_the_pod_started() {
        let mut v = FleetView::default();
        v.observe(hb("socket-0", NodeState::Ready, 1_000, 0.5));
        assert!(v.has_been_ready("socket-0", 900));
        // The same name restarted at 2 000 (a StatefulSet pod): not ready yet.
        assert!(!v.has_been_ready("socket-0", 2_000));
        v.observe(hb("socket-0", NodeState::Starting, 2_100, 0.1));
        assert!(!v.has_been_ready("socket-0", 2_000));
        v.observe(hb("socket-0", NodeState::Ready, 3_000, 0.3));
        assert!(v.has_been_ready("socket-0", 2_000));
        // Draining after being ready: was ready.
        v.observe(hb("socket-0", NodeState::Draining, 4_000, 0.3));
        assert!(v.has_been_ready("socket-0", 2_000));
        assert!(!v.has_been_ready("socket-9", 0));
    }

    #[test]
    fn samples_need_a_fresh_heartbeat() {
        let mut v = FleetView::default();
        v.observe(hb("socket-0", NodeState::Ready, 10_000, 0.5));
        // An older heartbeat arriving late does not replace the newer.
        v.observe(hb("socket-0", NodeState::Starting, 9_000, 0.9));
        let s = v.sample("socket-0", 0, 12_000, 3_000);
        assert_eq!((s.ready, s.cpu, s.memory), (true, Some(0.5), Some(0.2)));
        let stale = v.sample("socket-0", 0, 13_001, 3_000);
        assert_eq!((stale.ready, stale.cpu), (false, None));
        let restarted = v.sample("socket-0", 11_000, 12_000, 3_000);
        assert_eq!(restarted.cpu, None);
        v.retain(|id| id != "socket-0");
        assert_eq!(v.sample("socket-0", 0, 12_000, 3_000).cpu, None);
    }

    #[test]
    fn draining_nodes_come_from_the_assignment() {
        let raw = r#"{"v":1,"epoch":3,"leader_epoch":1,"partitions":2,
            "nodes":[{"id":"socket-0","url":"ws://a/ws","state":"ready"},
                     {"id":"socket-4","url":"ws://b/ws","state":"draining"}],
            "owners":[0,0]}"#;
        let a = Assignment::from_json(raw.as_bytes()).unwrap();
        assert_eq!(draining_in(&a), BTreeSet::from(["socket-4".to_owned()]));
    }
}
