//! Heartbeat ingestion: every replica tails the heartbeat stream into its
//! [`Fleet`], counting invalid entries by reason, and signals when the
//! membership the assignment depends on (live nodes and their states)
//! changes.
//!
//! Time here is **Redis's clock** ([`IngestClock`]): a heartbeat counts as
//! received when Redis added it (its stream id), and "now" is Redis's `TIME`
//! when the last read returned. A node is dead when Redis has added nothing
//! from it for the dead-after time, as Redis saw it. So a Redis stall, or
//! this replica failing to read, never makes a node look dead: nobody's
//! clock moves until a read succeeds, and that read brings every heartbeat
//! added meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use rtc_core::NodeState;
use rtc_core::redis_io::{HeartbeatBatch, HeartbeatCursor, StreamHeartbeat, entry_ms};
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

/// Redis's clock as the last successful read saw it, and since when reads
/// have kept succeeding.
#[derive(Debug, Default)]
pub struct IngestClock {
    state: Mutex<ClockState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ClockState {
    now_ms: Option<u64>,
    healthy_since_ms: Option<u64>,
}

impl IngestClock {
    /// A read returned at `redis_now_ms` (Redis's `TIME`).
    pub fn read_at(&self, redis_now_ms: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Never backwards (a Redis failover to a host whose clock is behind).
        let now = s.now_ms.map_or(redis_now_ms, |n| n.max(redis_now_ms));
        s.now_ms = Some(now);
        s.healthy_since_ms.get_or_insert(now);
    }

    /// A read failed: ingestion is unhealthy until reads succeed again.
    pub fn failed(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).healthy_since_ms = None;
    }

    /// Redis's clock at the last successful read (`None` before any).
    pub fn now_ms(&self) -> Option<u64> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).now_ms
    }

    /// How long reads have kept succeeding, on Redis's clock (0 after a
    /// failure, until the next success).
    pub fn healthy_for_ms(&self) -> u64 {
        let s = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (s.now_ms, s.healthy_since_ms) {
            (Some(now), Some(since)) => now.saturating_sub(since),
            _ => 0,
        }
    }
}

/// Applies one batch to the fleet; returns the number taken. Each
/// heartbeat is received when Redis added it.
pub fn apply_batch(
    fleet: &mut Fleet,
    batch: Vec<StreamHeartbeat>,
    partitions: u32,
    observer: &dyn IngestObserver,
) -> usize {
    let mut taken = 0;
    for StreamHeartbeat { at_ms, heartbeat } in batch {
        let heartbeat = match heartbeat {
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
        match fleet.observe(heartbeat, at_ms) {
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
    pub clock: Arc<IngestClock>,
}

impl<C: ConnectionLike + Send> Ingest<C> {
    /// Runs until `shutdown`; `changed` gets the new membership whenever it
    /// differs (a join, a state change, a death noticed on a quiet stream).
    pub async fn run(self, changed: watch::Sender<Membership>, shutdown: CancellationToken) {
        let Ingest { mut conn, cursor, fleet, partitions, observer, clock } = self;
        let on_batch = |batch: HeartbeatBatch| {
            clock.read_at(batch.redis_now_ms);
            let now = clock.now_ms().unwrap_or(batch.redis_now_ms);
            // The age of the newest entry read: milliseconds when caught up,
            // growing when this replica falls behind.
            let lag = if batch.entries.is_empty() {
                0.0
            } else {
                now.saturating_sub(entry_ms(&batch.position)) as f64 / 1000.0
            };
            let current = {
                let mut fleet = fleet.lock().unwrap_or_else(|p| p.into_inner());
                let taken = apply_batch(&mut fleet, batch.entries, partitions, observer.as_ref());
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
        let on_error = |e: &redis::RedisError| {
            clock.failed();
            tracing::warn!(error = %e, "reading heartbeats failed; retrying");
        };
        cursor.follow(&mut conn, shutdown.cancelled(), on_batch, on_error).await;
    }
}

/// How long one blocking read waits: short enough to notice deaths on a
/// quiet stream within a fraction of an interval.
pub fn block_for(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 4).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_only_with_reads_and_never_back() {
        let clock = IngestClock::default();
        assert_eq!((clock.now_ms(), clock.healthy_for_ms()), (None, 0));
        clock.read_at(10_000);
        clock.read_at(12_000);
        assert_eq!((clock.now_ms(), clock.healthy_for_ms()), (Some(12_000), 2_000));
        // A Redis whose clock is behind (a failover) does not turn it back.
        clock.read_at(11_000);
        assert_eq!(clock.now_ms(), Some(12_000));
        // A failed read: unhealthy until the next success, which starts over.
        clock.failed();
        assert_eq!((clock.now_ms(), clock.healthy_for_ms()), (Some(12_000), 0));
        clock.read_at(15_000);
        clock.read_at(15_500);
        assert_eq!(clock.healthy_for_ms(), 500);
    }
}
