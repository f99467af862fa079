//! Counters and latency distributions of the run (pure; the caller holds
//! them behind a lock).

use std::collections::BTreeMap;

/// Milliseconds above this share the last bucket (the exact max is kept).
pub const HIST_MAX_MS: usize = 60_000;

/// A 1 ms histogram of latencies in milliseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: vec![0; HIST_MAX_MS + 1], count: 0, max: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, ms: u64) {
        self.buckets[(ms as usize).min(HIST_MAX_MS)] += 1;
        self.count += 1;
        self.max = self.max.max(ms);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (exact, even beyond the last bucket).
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The `q` quantile (nearest rank); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        let bucket = self.buckets.iter().position(|c| {
            seen += c;
            seen >= rank
        })?;
        // The overflow bucket reports the true max rather than its floor.
        Some(if bucket == HIST_MAX_MS { self.max } else { bucket as u64 })
    }
}

/// What the users saw, beside the message ledger.
#[derive(Debug, Default)]
pub struct Stats {
    /// Disconnect (or drop) → `welcome` on the next session, in ms.
    pub reconnect: Histogram,
    /// Completed reconnects by what ended the previous session.
    pub reconnect_reasons: BTreeMap<String, u64>,
    /// Reconnects the user gave up because it left first.
    pub reconnects_abandoned: u64,
    /// Failed `/v1/route` requests by HTTP status or error kind.
    pub route_errors: BTreeMap<String, u64>,
    /// Route requests moved to another load balancer after a connection error.
    pub route_failovers: u64,
    /// Refused or failed WebSocket connects by kind (`409:not_owner`, …).
    pub connect_errors: BTreeMap<String, u64>,
    /// Moments a user had two sockets open at once (must stay 0).
    pub double_sessions: u64,
    /// Users the server told not to come back, by reason.
    pub stopped_by_server: BTreeMap<String, u64>,
    /// Users that ran out of connect attempts.
    pub gave_up: u64,
    /// `error` frames by code.
    pub error_frames: BTreeMap<String, u64>,
    /// `resumed{recovered:false}` by reason.
    pub unrecovered_resumes: BTreeMap<String, u64>,
    /// Text frames that were not valid protocol JSON.
    pub unparsed_frames: u64,
    /// Reconnect times since the last [`Stats::take_recent_reconnects`],
    /// ms → count.
    recent_reconnect: BTreeMap<u64, u64>,
}

impl Stats {
    pub fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
        *map.entry(key.into()).or_default() += 1;
    }

    pub fn reconnected(&mut self, ms: u64, reason: &str) {
        self.reconnect.record(ms);
        *self.recent_reconnect.entry(ms.min(HIST_MAX_MS as u64)).or_default() += 1;
        Self::count(&mut self.reconnect_reasons, reason);
    }

    /// The reconnect times recorded since the last call, ms → count: a
    /// timeline line's share, so a run's moves can be told apart.
    pub fn take_recent_reconnects(&mut self) -> BTreeMap<u64, u64> {
        std::mem::take(&mut self.recent_reconnect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_max() {
        let mut h = Histogram::default();
        assert_eq!((h.quantile(0.5), h.max(), h.count()), (None, None, 0));
        for _ in 0..50 {
            h.record(2);
        }
        for _ in 0..49 {
            h.record(3);
        }
        h.record(900);
        assert_eq!(h.quantile(0.5), Some(2));
        assert_eq!(h.quantile(0.99), Some(3));
        assert_eq!(h.quantile(1.0), Some(900));
        assert_eq!(h.quantile(0.0), Some(2));
        assert_eq!(h.max(), Some(900));
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn values_beyond_the_last_bucket_keep_their_max() {
        let mut h = Histogram::default();
        h.record(10);
        h.record(250_000);
        assert_eq!(h.quantile(1.0), Some(250_000));
        assert_eq!(h.max(), Some(250_000));
    }

    #[test]
    fn counts_by_key() {
        let mut s = Stats::default();
        s.reconnected(120, "rebalance");
        s.reconnected(80, "rebalance");
        s.reconnected(300, "dropped");
        assert_eq!(s.take_recent_reconnects(), BTreeMap::from([(80, 1), (120, 1), (300, 1)]));
        assert!(s.take_recent_reconnects().is_empty(), "only what came since");
        Stats::count(&mut s.route_errors, "503");
        assert_eq!(s.reconnect_reasons["rebalance"], 2);
        assert_eq!(s.reconnect.quantile(0.5), Some(120));
        assert_eq!(s.route_errors["503"], 1);
    }
}
