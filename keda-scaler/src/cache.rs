//! The decision cache: one watcher task reads `rtc:scale:decision` from
//! Redis every poll interval into a `watch` channel, and every RPC answers
//! from the latest reading. Redis sees one `GET` per poll interval per
//! replica, whatever the request rate, and all replicas answer alike (they
//! read the same key written by the load-balancer leader).
//!
//! Staleness is judged when a request is answered, from the decision's own
//! `decided_at_ms`, so a decision that stops being rewritten goes stale on
//! time even between two polls. The leader stamps decisions on Redis's
//! clock, and each read also takes Redis's `TIME`: the age is measured on
//! Redis's clock too, whatever this host's clock says.

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
    /// Redis's clock minus this host's, at the read (0 until known).
    pub redis_offset_ms: i64,
}

impl Snapshot {
    pub fn not_loaded() -> Self {
        Self { reading: Reading::NotLoaded, read_at_ms: 0, redis_offset_ms: 0 }
    }

    /// This host's `now_ms` on Redis's clock.
    pub fn redis_now(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.redis_offset_ms)
    }

    /// The decision's age at `now_ms` (this host's clock), on Redis's clock.
    pub fn decision_age_ms(&self, now_ms: u64) -> Option<u64> {
        match &self.reading {
            Reading::Decision(d) => Some(d.age_ms(self.redis_now(now_ms))),
            _ => None,
        }
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
                let age_ms = d.age_ms(self.redis_now(now_ms));
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

/// Reads the decision key once, with Redis's clock (`TIME`, ms) when it
/// could be read.
pub async fn read(conn: &mut impl ConnectionLike, key: &str) -> (Reading, Option<u64>) {
    let read = redis::pipe().cmd("GET").arg(key).cmd("TIME").query_async::<(Option<Vec<u8>>, (u64, u64))>(conn).await;
    match read {
        Ok((raw, (secs, micros))) => {
            let redis_now = secs.saturating_mul(1000).saturating_add(micros / 1000);
            let reading = match raw {
                None => Reading::Missing,
                Some(raw) => match Decision::from_json(&raw) {
                    Ok(d) => Reading::Decision(Arc::new(d)),
                    Err(e) => Reading::Malformed(e),
                },
            };
            (reading, Some(redis_now))
        }
        Err(e) => (Reading::RedisUnreachable(e.to_string()), None),
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
        let mut redis_offset_ms = 0i64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (reading, redis_now) = tokio::select! {
                _ = stop.cancelled() => return,
                r = read(&mut self.conn, &self.key) => r,
            };
            let read_at_ms = (self.clock)();
            if let Some(redis_now) = redis_now {
                redis_offset_ms = redis_now as i64 - read_at_ms as i64;
            }
            let kind = std::mem::discriminant(&reading);
            if last_kind != Some(kind) {
                log_transition(&reading, &self.key);
                last_kind = Some(kind);
            }
            let snapshot = Snapshot { reading, read_at_ms, redis_offset_ms };
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

    fn snapshot(reading: Reading, read_at_ms: u64) -> Snapshot {
        Snapshot { reading, read_at_ms, redis_offset_ms: 0 }
    }

    #[test]
    fn staleness_is_judged_at_answer_time() {
        let max = Duration::from_millis(6_000);
        let s = snapshot(Reading::Decision(decision(4, 10_000)), 10_000);
        assert_eq!(s.fresh(16_000, max).unwrap().desired_replicas, 4);
        assert_eq!(s.fresh(16_001, max), Err(Unavailable::Stale { age_ms: 6_001, max_age_ms: 6_000 }));
        // A decision from the future is fresh.
        assert!(s.fresh(9_000, max).is_ok());
        assert!(s.redis_reachable());
    }

    #[test]
    fn staleness_is_measured_on_redis_clock_whatever_this_hosts_clock_says() {
        let max = Duration::from_millis(6_000);
        // Decided at 10 000 on Redis's clock; this host's clock is 10 s behind.
        let behind =
            Snapshot { reading: Reading::Decision(decision(4, 10_000)), read_at_ms: 0, redis_offset_ms: 10_000 };
        assert!(behind.fresh(6_000, max).is_ok());
        assert_eq!(behind.decision_age_ms(6_000), Some(6_000));
        assert_eq!(behind.fresh(6_001, max), Err(Unavailable::Stale { age_ms: 6_001, max_age_ms: 6_000 }));
        // Compared with this host's clock it would have looked fresh 10 s longer.
        assert!(snapshot(behind.reading.clone(), 0).fresh(6_001, max).is_ok());
        // This host's clock an hour ahead: not stale at once.
        let ahead = Snapshot { redis_offset_ms: -3_600_000, ..behind };
        assert!(ahead.fresh(3_615_000, max).is_ok());
        assert!(ahead.fresh(3_616_001, max).is_err());
        assert!(snapshot(ahead.reading.clone(), 0).fresh(3_615_000, max).is_err());
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
            let err = snapshot(reading, 0).fresh(60_000, max).unwrap_err();
            assert_eq!(err.kind(), kind);
            assert!(err.to_string().contains(words), "{err}");
        }
        assert!(!Snapshot::not_loaded().redis_reachable());
        let down = snapshot(Reading::RedisUnreachable("x".into()), 1);
        assert!(!down.redis_reachable());
    }
}
