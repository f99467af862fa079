//! The decision cache: one watcher task reads `rtc:scale:decision` from
//! Redis every poll interval into a `watch` channel, and every RPC answers
//! from the latest reading. Redis sees one `GET` per poll interval per
//! replica, whatever the request rate, and all replicas answer alike (they
//! read the same key written by the load-balancer leader).
//!
//! Staleness is judged when a request is answered, from the decision's own
//! `decided_at_ms`, so a decision that stops being rewritten goes stale on
//! time even between two polls.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use rtc_core::{ContractError, Decision, Document};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the last read of the decision key gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The watcher has not finished its first read yet.
    NotLoaded,
    /// Redis did not answer (connection refused, reset or timed out).
    RedisUnreachable(String),
    /// The key does not exist: no leader has decided yet (or it was lost).
    Missing,
    /// The key holds something that is not a valid decision.
    Malformed(ContractError),
    Decision(Arc<Decision>),
}

/// The cache's content: the latest reading and when it was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub reading: Reading,
    pub read_at_ms: u64,
}

impl Snapshot {
    pub fn not_loaded() -> Self {
        Self { reading: Reading::NotLoaded, read_at_ms: 0 }
    }

    /// Whether the last read reached Redis (whatever the key held).
    pub fn redis_reachable(&self) -> bool {
        !matches!(self.reading, Reading::NotLoaded | Reading::RedisUnreachable(_))
    }

    /// The decision to serve at `now_ms`, or why there is none.
    pub fn fresh(&self, now_ms: u64, max_age: Duration) -> Result<&Decision, Unavailable> {
        match &self.reading {
            Reading::NotLoaded => Err(Unavailable::NotLoaded),
            Reading::RedisUnreachable(error) => Err(Unavailable::RedisUnreachable(error.clone())),
            Reading::Missing => Err(Unavailable::Missing),
            Reading::Malformed(error) => Err(Unavailable::Malformed(error.clone())),
            Reading::Decision(d) => {
                let age_ms = d.age_ms(now_ms);
                let max_age_ms = max_age.as_millis() as u64;
                if age_ms > max_age_ms { Err(Unavailable::Stale { age_ms, max_age_ms }) } else { Ok(d) }
            }
        }
    }
}

/// Why there is no decision to serve: each becomes a gRPC `UNAVAILABLE`
/// whose message says which, so KEDA's fallback takes over.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    #[error("scale decision not loaded yet: the scaler has not read Redis since it started")]
    NotLoaded,
    #[error("redis unreachable: {0}")]
    RedisUnreachable(String),
    #[error("scale decision missing: no load-balancer leader has written one")]
    Missing,
    #[error("scale decision malformed: {0}")]
    Malformed(ContractError),
    #[error("scale decision stale: decided {age_ms} ms ago, staleness bound {max_age_ms} ms")]
    Stale { age_ms: u64, max_age_ms: u64 },
}

impl Unavailable {
    /// Stable label for metrics (`outcome`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotLoaded => "not_loaded",
            Self::RedisUnreachable(_) => "redis_unreachable",
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Stale { .. } => "stale",
        }
    }
}

/// Reads the decision key once.
pub async fn read(conn: &mut impl ConnectionLike, key: &str) -> Reading {
    match redis::cmd("GET").arg(key).query_async::<Option<Vec<u8>>>(conn).await {
        Ok(None) => Reading::Missing,
        Ok(Some(raw)) => match Decision::from_json(&raw) {
            Ok(d) => Reading::Decision(Arc::new(d)),
            Err(e) => Reading::Malformed(e),
        },
        Err(e) => Reading::RedisUnreachable(e.to_string()),
    }
}

/// Told about every reading, e.g. to update metrics and health.
pub trait Observer: Send + Sync + 'static {
    fn observed(&self, snapshot: &Snapshot, changed: bool) -> impl Future<Output = ()> + Send;
}

/// Polls the decision key into the cache until stopped.
pub struct Watcher<C> {
    pub conn: C,
    pub key: String,
    pub poll: Duration,
    pub clock: fn() -> u64,
}

impl<C: ConnectionLike + Send> Watcher<C> {
    pub async fn run(mut self, tx: watch::Sender<Snapshot>, observer: impl Observer, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_kind = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let reading = tokio::select! {
                _ = stop.cancelled() => return,
                r = read(&mut self.conn, &self.key) => r,
            };
            let kind = std::mem::discriminant(&reading);
            if last_kind != Some(kind) {
                log_transition(&reading, &self.key);
                last_kind = Some(kind);
            }
            let snapshot = Snapshot { reading, read_at_ms: (self.clock)() };
            // Subscribers (StreamIsActive) wake only when the content
            // changes; the reading time alone is no news.
            let changed = tx.send_if_modified(|current| {
                let changed = current.reading != snapshot.reading;
                *current = snapshot.clone();
                changed
            });
            observer.observed(&snapshot, changed).await;
        }
    }
}

fn log_transition(reading: &Reading, key: &str) {
    match reading {
        Reading::NotLoaded => {}
        Reading::RedisUnreachable(error) => tracing::warn!(%error, key, "redis unreachable: answering UNAVAILABLE"),
        Reading::Missing => tracing::warn!(key, "no scale decision in redis: answering UNAVAILABLE"),
        Reading::Malformed(error) => tracing::warn!(%error, key, "malformed scale decision: answering UNAVAILABLE"),
        Reading::Decision(d) => {
            tracing::info!(key, desired = d.desired_replicas, leader_epoch = d.leader_epoch, "reading scale decisions")
        }
    }
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotLoaded => "not_loaded",
            Self::RedisUnreachable(_) => "redis_unreachable",
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Decision(_) => "decision",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_core::{Action, Urgency};

    fn decision(desired: u32, decided_at_ms: u64) -> Arc<Decision> {
        Arc::new(Decision {
            v: 1,
            desired_replicas: desired,
            current_replicas: desired,
            action: Action::Hold,
            step: 0,
            urgency: Urgency::None,
            reason: "steady".into(),
            decided_at_ms,
            leader_epoch: 1,
        })
    }

    #[test]
    fn staleness_is_judged_at_answer_time() {
        let max = Duration::from_millis(6_000);
        let s = Snapshot { reading: Reading::Decision(decision(4, 10_000)), read_at_ms: 10_000 };
        assert_eq!(s.fresh(16_000, max).unwrap().desired_replicas, 4);
        assert_eq!(s.fresh(16_001, max), Err(Unavailable::Stale { age_ms: 6_001, max_age_ms: 6_000 }));
        // Clock skew: a decision from the future is fresh.
        assert!(s.fresh(9_000, max).is_ok());
        assert!(s.redis_reachable());
    }

    #[test]
    fn every_failure_says_which() {
        let max = Duration::from_secs(6);
        let cases = [
            (Reading::NotLoaded, "not_loaded", "not loaded"),
            (Reading::RedisUnreachable("connection refused".into()), "redis_unreachable", "redis unreachable"),
            (Reading::Missing, "missing", "missing"),
            (Reading::Malformed(ContractError::Json("eof".into())), "malformed", "malformed"),
            (Reading::Decision(decision(1, 0)), "stale", "stale"),
        ];
        for (reading, kind, words) in cases {
            let err = Snapshot { reading, read_at_ms: 0 }.fresh(60_000, max).unwrap_err();
            assert_eq!(err.kind(), kind);
            assert!(err.to_string().contains(words), "{err}");
        }
        assert!(!Snapshot::not_loaded().redis_reachable());
        let down = Snapshot { reading: Reading::RedisUnreachable("x".into()), read_at_ms: 1 };
        assert!(!down.redis_reachable());
    }
}
