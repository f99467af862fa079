//! Heartbeat ingestion: every replica tails the heartbeat stream into its
//! [`Fleet`], counting invalid entries by reason, and signals when the
//! membership the assignment depends on (live nodes and their states)
//! changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use rtc_core::NodeState;
use rtc_core::redis_io::HeartbeatCursor;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, Rejected};

/// Live node ids and states: what a recompute of the assignment depends on.
pub type Membership = BTreeMap<String, NodeState>;

pub fn membership(fleet: &Fleet, now_ms: u64) -> Membership {
    fleet.live(now_ms).into_iter().map(|n| (n.id, n.state)).collect()
}

/// Where ingestion reports what it refused (`reason` label values).
pub trait IngestObserver: Send + Sync {
    fn invalid(&self, reason: &'static str);
    /// A batch was read: `taken` heartbeats applied, and how far behind the
    /// stream's newest entry read this replica is (0 when caught up).
    fn ingested(&self, _taken: usize, _lag_seconds: f64) {}
}

/// Applies one batch to the fleet; returns the number taken.
pub fn apply_batch(
    fleet: &mut Fleet,
    batch: Vec<Result<rtc_core::Heartbeat, rtc_core::ContractError>>,
    partitions: u32,
    now_ms: u64,
    observer: &dyn IngestObserver,
) -> usize {
    let mut taken = 0;
    for entry in batch {
        let heartbeat = match entry {
            Ok(hb) => hb,
            Err(e) => {
                observer.invalid(e.kind());
                continue;
            }
        };
        if heartbeat.check_partitions(partitions).is_err() {
            observer.invalid("partition");
            continue;
        }
        match fleet.observe(heartbeat, now_ms) {
            Ok(()) => taken += 1,
            Err(Rejected::Stale) => observer.invalid("stale"),
        }
    }
    taken
}

pub struct Ingest<C> {
    pub conn: C,
    pub cursor: HeartbeatCursor,
    pub fleet: Arc<Mutex<Fleet>>,
    pub partitions: u32,
    pub observer: Arc<dyn IngestObserver>,
    /// Milliseconds on the load balancer's clock.
    pub clock: fn() -> u64,
}

impl<C: ConnectionLike + Send> Ingest<C> {
    /// Runs until `shutdown`; `changed` gets the new membership whenever it
    /// differs (a join, a state change, a death noticed on a quiet stream).
    pub async fn run(self, changed: watch::Sender<Membership>, shutdown: CancellationToken) {
        let Ingest { mut conn, cursor, fleet, partitions, observer, clock } = self;
        let on_batch = |position: &str, batch| {
            let now = clock();
            // The age of the newest entry read (stream ids are the Redis
            // clock's milliseconds): milliseconds when caught up, growing
            // when this replica falls behind.
            let read_ms = position.split('-').next().and_then(|ms| ms.parse::<u64>().ok());
            let lag = match read_ms {
                Some(ms) if !Vec::is_empty(&batch) => now.saturating_sub(ms) as f64 / 1000.0,
                _ => 0.0,
            };
            let current = {
                let mut fleet = fleet.lock().unwrap_or_else(|p| p.into_inner());
                let taken = apply_batch(&mut fleet, batch, partitions, now, observer.as_ref());
                observer.ingested(taken, lag);
                fleet.expire(now);
                membership(&fleet, now)
            };
            changed.send_if_modified(|m| {
                let differs = *m != current;
                if differs {
                    *m = current;
                }
                differs
            });
        };
        let on_error = |e: &redis::RedisError| tracing::warn!(error = %e, "reading heartbeats failed; retrying");
        cursor.follow(&mut conn, shutdown.cancelled(), on_batch, on_error).await;
    }
}

/// How long one blocking read waits: short enough to notice deaths on a
/// quiet stream within a fraction of an interval.
pub fn block_for(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 4).max(Duration::from_millis(10))
}
