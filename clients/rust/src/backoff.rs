//! When to reconnect: capped exponential backoff with full jitter, and what
//! the end of a session means for the next attempt. Pure: randomness comes
//! in as a number in `[0, 1)`, so both are unit-tested.

use std::time::Duration;

use rtc_core::protocol::{CloseReason, reconnects_after};

/// Capped exponential backoff with full jitter, as centrifuge-js does it:
/// after `step` failures in a row the delay is
/// `min(max, min + u · min(max, min · 2^step))` with `u` uniform in `[0, 1)`.
/// The first retry waits between `min` and `2·min`; the delays spread over
/// an interval that doubles with each failure until `max` caps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    /// `max` below `min` is raised to `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), step: 0 }
    }

    /// The delay after `step` failures in a row, for a random `unit` in
    /// `[0, 1)` (values outside are clamped; NaN counts as 0).
    pub fn delay(&self, step: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        let span = self.min.saturating_mul(1u32 << step.min(31)).min(self.max);
        let jitter = Duration::try_from_secs_f64(span.as_secs_f64() * unit).unwrap_or(span);
        self.min.saturating_add(jitter).min(self.max)
    }

    /// The delay before the next attempt; counts one more failure.
    pub fn next(&mut self, unit: f64) -> Duration {
        let delay = self.delay(self.step, unit);
        self.step = self.step.saturating_add(1);
        delay
    }

    /// The longest delay.
    pub fn cap(&self) -> Duration {
        self.max
    }

    /// Failures in a row since the last successful connect.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// A session opened: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// How a session ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The server sent `disconnect`: reconnect after `retry_after` (through
    /// the load balancer, with the last id), unless `reconnect` is false.
    Disconnect { reason: CloseReason, reconnect: bool, retry_after: Duration },
    /// The server closed the WebSocket without a `disconnect` first.
    Closed { code: u16, reason: String },
    /// The connection failed, ended without a close frame, or nothing was
    /// heard from the server for [`crate::ClientConfig::read_timeout`].
    Lost(String),
    /// The application closed the client (or dropped it).
    ClientClosed,
}

impl SessionEnd {
    /// How long to wait before reconnecting; `None`: do not reconnect.
    /// A `disconnect` is followed exactly (its `retry_after_ms`, no backoff
    /// on top); a close code of 4500 or more (or 3000–3999) is final
    /// (`rtc_core::protocol::reconnects_after`); any other close or a lost
    /// connection backs off.
    pub fn reconnect_delay(&self, backoff: &mut Backoff, unit: f64) -> Option<Duration> {
        match self {
            Self::Disconnect { reconnect: true, retry_after, .. } => Some(*retry_after),
            Self::Disconnect { reconnect: false, .. } | Self::ClientClosed => None,
            Self::Closed { code, .. } if !reconnects_after(*code) => None,
            Self::Closed { .. } | Self::Lost(_) => Some(backoff.next(unit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_stay_within_their_bounds_and_the_cap() {
        let b = Backoff::new(500 * MS, 20_000 * MS);
        // Step s: [min, min + min(max, min·2^s)], capped at max.
        for (step, high) in [(0, 1_000), (1, 1_500), (2, 2_500), (3, 4_500), (5, 16_500), (6, 20_000), (40, 20_000)] {
            assert_eq!(b.delay(step, 0.0), 500 * MS, "step {step} low end");
            let top = b.delay(step, 0.999_999);
            assert!(top <= high * MS && top + 20 * MS >= high * MS, "step {step}: {top:?} vs {high} ms");
            assert_eq!(b.delay(step, 1.0), high * MS, "step {step} high end");
        }
        // Out-of-range units are clamped, never panic.
        assert_eq!(b.delay(2, -3.0), 500 * MS);
        assert_eq!(b.delay(2, 7.0), 2_500 * MS);
        assert_eq!(b.delay(2, f64::NAN), 500 * MS);
        assert_eq!(b.delay(u32::MAX, 0.5), 10_500 * MS, "min + half the capped span");
    }

    #[test]
    fn next_counts_failures_and_reset_starts_over() {
        let mut b = Backoff::new(100 * MS, 1_000 * MS);
        let highs: Vec<Duration> = (0..6).map(|_| b.next(1.0)).collect();
        assert_eq!(highs, [200, 300, 500, 900, 1_000, 1_000].map(|ms| ms * MS));
        assert_eq!(b.step(), 6);
        b.reset();
        assert_eq!(b.step(), 0);
        assert_eq!(b.next(1.0), 200 * MS);
        // max below min is raised to min: the delay is always min.
        let mut fixed = Backoff::new(300 * MS, 10 * MS);
        assert_eq!(fixed.next(0.9), 300 * MS);
        assert_eq!(fixed.next(0.9), 300 * MS);
    }

    #[test]
    fn full_jitter_spreads_delays_over_the_whole_interval() {
        // Step 3 with min 100 ms: uniform in [100, 900) ms.
        let b = Backoff::new(100 * MS, 10_000 * MS);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let samples: Vec<u128> = (0..4_000).map(|_| b.delay(3, rng.random()).as_millis()).collect();
        let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
        assert!(*lo >= 100 && *lo < 110, "lowest {lo}");
        assert!(*hi < 900 && *hi > 890, "highest {hi}");
        // Each of the eight 100 ms bands holds about an eighth (500) of them.
        let mut bands = [0u32; 8];
        for s in &samples {
            bands[((s - 100) / 100) as usize] += 1;
        }
        for (i, n) in bands.iter().enumerate() {
            assert!((400..=600).contains(n), "band {i}: {n} of 4000 ({bands:?})");
        }
        let mean = samples.iter().sum::<u128>() as f64 / samples.len() as f64;
        assert!((mean - 500.0).abs() < 15.0, "mean {mean}");
    }

    #[test]
    fn a_disconnect_is_followed_exactly_without_backoff() {
        let mut b = Backoff::new(500 * MS, 20_000 * MS);
        b.next(0.5);
        b.next(0.5);
        let end = SessionEnd::Disconnect { reason: CloseReason::Rebalance, reconnect: true, retry_after: 120 * MS };
        for unit in [0.0, 0.5, 0.99] {
            assert_eq!(end.reconnect_delay(&mut b, unit), Some(120 * MS));
        }
        assert_eq!(b.step(), 2, "retry_after does not count as a failure");
        let zero =
            SessionEnd::Disconnect { reason: CloseReason::Shutdown, reconnect: true, retry_after: Duration::ZERO };
        assert_eq!(zero.reconnect_delay(&mut b, 0.9), Some(Duration::ZERO));
        let no = SessionEnd::Disconnect { reason: CloseReason::Drain, reconnect: false, retry_after: 5 * MS };
        assert_eq!(no.reconnect_delay(&mut b, 0.9), None);
    }

    #[test]
    fn terminal_close_codes_stop_and_others_back_off() {
        let closed = |code: u16| SessionEnd::Closed { code, reason: String::new() };
        for code in [4500, 4501, 4999, 3000, 3999] {
            let mut b = Backoff::new(500 * MS, 20_000 * MS);
            assert_eq!(closed(code).reconnect_delay(&mut b, 0.5), None, "{code}");
            assert_eq!(b.step(), 0);
        }
        for code in [1000, 1001, 1006, 1011, 4000, 4001, 4004, 4499] {
            let mut b = Backoff::new(500 * MS, 20_000 * MS);
            b.next(0.0);
            assert_eq!(closed(code).reconnect_delay(&mut b, 1.0), Some(1_500 * MS), "{code}: step 1, high end");
            assert_eq!(b.step(), 2);
        }
        let mut b = Backoff::new(500 * MS, 20_000 * MS);
        assert_eq!(SessionEnd::Lost("reset".into()).reconnect_delay(&mut b, 0.0), Some(500 * MS));
        assert_eq!(SessionEnd::ClientClosed.reconnect_delay(&mut b, 0.0), None);
    }
}
