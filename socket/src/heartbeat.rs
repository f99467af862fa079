//! Heartbeats: every interval (and at once after an epoch is acknowledged or
//! the node starts draining) the node appends its figures to the
//! `rtc:heartbeats` stream. Redis being down never stops the node: the
//! failure is counted, `rtc_socket_redis_up` drops to 0, and the next tick
//! tries again (the connection manager reconnects with backoff).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use redis::aio::ConnectionManager;
use rtc_core::{Document, Heartbeat};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::kafka::PartitionConsumer;
use crate::lifecycle::Lifecycle;
use crate::metrics::{HeartbeatOutcome, Metrics, WindowFigures};
use crate::ownership::Ownership;
use crate::sysstat::{Sample, SysStat};

/// Stream length kept (approximately): minutes of history for a large fleet.
const STREAM_MAXLEN: usize = 100_000;

/// What a heartbeat reports, read through these handles.
pub struct HeartbeatSource {
    pub node_id: String,
    pub url: String,
    pub capacity: u64,
    pub interval: Duration,
    pub lifecycle: Arc<Lifecycle>,
    pub ownership: Arc<Ownership>,
    pub hub: Arc<Hub>,
    pub consumer: Arc<PartitionConsumer>,
    pub metrics: Arc<Metrics>,
    /// Renewed by every heartbeat written.
    pub lease: Arc<crate::lease::NodeLease>,
    /// Wakes the loop for an immediate heartbeat.
    pub now: Arc<tokio::sync::Notify>,
}

/// The heartbeat for the figures gathered over `elapsed`.
pub fn build(
    node: &HeartbeatSource,
    seq: u64,
    sent_at_ms: u64,
    sys: Sample,
    window: WindowFigures,
    elapsed: Duration,
) -> Heartbeat {
    let secs = elapsed.as_secs_f64().max(0.001);
    let view = node.ownership.view();
    Heartbeat {
        v: rtc_core::CONTRACT_VERSION,
        node_id: node.node_id.clone(),
        url: node.url.clone(),
        state: node.lifecycle.state(),
        seq,
        sent_at_ms,
        assignment_epoch: node.ownership.acked_epoch(),
        connections: node.hub.connections(),
        capacity: node.capacity.max(1),
        cpu: sys.cpu.clamp(0.0, 1.0),
        memory: sys.memory.clamp(0.0, 1.0),
        mps_in: window.consumed as f64 / secs,
        mps_out: window.delivered as f64 / secs,
        p95_latency_ms: window.p95_latency_ms,
        kafka_lag: crate::kafka::lag_of(&node.consumer, view.accepting.iter().copied()),
        partition_connections: Some(node.hub.partition_connections()),
    }
}

pub async fn run(node: Arc<HeartbeatSource>, mut conn: ConnectionManager, key: String, shutdown: CancellationToken) {
    let interval = node.interval;
    let mut sys = SysStat::detect();
    tracing::info!(source = sys.source(), "cpu and memory figures");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = node.now.notified() => {}
        }
        seq += 1;
        let sample = sys.sample().unwrap_or(Sample { cpu: 0.0, memory: 0.0 });
        let hb = build(&node, seq, crate::kafka::now_ms() as u64, sample, node.metrics.window.take(), last.elapsed());
        last = Instant::now();
        node.metrics.kafka_lag.set(hb.kafka_lag as f64);
        node.metrics.cpu.set(hb.cpu);
        node.metrics.memory.set(hb.memory);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key).arg("MAXLEN").arg("~").arg(STREAM_MAXLEN).arg("*").arg("hb").arg(hb.to_json());
        let sent_at = Instant::now();
        let add = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(interval, add).await {
            Ok(Ok(_)) => {
                if node.lease.renew(sent_at) {
                    // At start, or after a fence: an assignment read before
                    // this write does not count, so read one now instead of
                    // at the next poll.
                    node.ownership.read_assignment_now();
                }
                node.metrics.redis_up.set(1.0);
                node.metrics.heartbeats.increment(HeartbeatOutcome::Ok);
            }
            Ok(Err(e)) => failed(&node, &e.to_string()),
            Err(_) => failed(&node, "timed out"),
        }
    }
}

fn failed(node: &HeartbeatSource, error: &str) {
    node.metrics.redis_up.set(0.0);
    node.metrics.heartbeats.increment(HeartbeatOutcome::Error);
    tracing::warn!(error, "heartbeat not written; serving on, retrying next tick");
}
