//! Retry pacing of one user: exponential backoff with jitter, and what a
//! session's end means for the next attempt. Pure: randomness comes in as a
//! number in `[0, 1)`.

/// Exponential backoff with "equal jitter": the n-th delay is uniform in
/// `[cap/2, cap]` where `cap = min(max, base · 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        Self { base_ms: base_ms.max(1), max_ms: max_ms.max(base_ms.max(1)), attempt: 0 }
    }

    /// Delay before the next attempt; `unit` is a random number in `[0, 1)`.
    pub fn next_ms(&mut self, unit: f64) -> u64 {
        let cap = self.base_ms.saturating_mul(1u64 << self.attempt.min(32)).min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        half + ((cap - half) as f64 * unit.clamp(0.0, 1.0)) as u64
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How a session ended, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd<'a> {
    /// A `disconnect` frame (possibly followed by a close frame).
    Disconnect { reason: &'a str, reconnect: bool, retry_after_ms: u64 },
    /// A close frame without a `disconnect` before it.
    Close { code: u16 },
    /// The connection failed or ended without a close frame.
    Dropped,
}

/// What the user does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Ask the load balancer again after `wait_ms` (`None`: use the backoff).
    Reconnect { reason: String, wait_ms: Option<u64> },
    /// The server asked the client not to come back.
    Stop { reason: String },
}

/// The protocol's rules: `disconnect{reconnect}` decides when present; close
/// codes 4000–4499 reconnect and 4500+ do not; other closes and dropped
/// connections reconnect with backoff.
pub fn next_after(end: SessionEnd<'_>) -> Next {
    match end {
        SessionEnd::Disconnect { reason, reconnect: true, retry_after_ms } => {
            Next::Reconnect { reason: reason.to_owned(), wait_ms: Some(retry_after_ms) }
        }
        SessionEnd::Disconnect { reason, reconnect: false, .. } => Next::Stop { reason: reason.to_owned() },
        SessionEnd::Close { code } if code >= 4500 => Next::Stop { reason: format!("close_{code}") },
        SessionEnd::Close { code } if code >= 4000 => {
            Next::Reconnect { reason: format!("close_{code}"), wait_ms: Some(0) }
        }
        SessionEnd::Close { code } => Next::Reconnect { reason: format!("close_{code}"), wait_ms: None },
        SessionEnd::Dropped => Next::Reconnect { reason: "dropped".into(), wait_ms: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_and_cap() {
        let mut b = Backoff::new(100, 1000);
        let low: Vec<u64> = (0..6).map(|_| b.next_ms(0.0)).collect();
        assert_eq!(low, vec![50, 100, 200, 400, 500, 500]);
        b.reset();
        let high: Vec<u64> = (0..6).map(|_| b.next_ms(0.999_999)).collect();
        assert_eq!(high, vec![99, 199, 399, 799, 999, 999]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.attempts(), 0);
        // Many attempts never overflow.
        for _ in 0..100 {
            assert!(b.next_ms(0.5) <= 1000);
        }
    }

    #[test]
    fn degenerate_settings_are_safe() {
        let mut b = Backoff::new(0, 0);
        assert!(b.next_ms(0.5) <= 1);
        let mut b = Backoff::new(500, 10);
        assert!(b.next_ms(1.0) <= 500);
    }

    #[test]
    fn session_ends_follow_the_protocol() {
        assert_eq!(
            next_after(SessionEnd::Disconnect { reason: "rebalance", reconnect: true, retry_after_ms: 120 }),
            Next::Reconnect { reason: "rebalance".into(), wait_ms: Some(120) }
        );
        assert_eq!(
            next_after(SessionEnd::Disconnect { reason: "banned", reconnect: false, retry_after_ms: 0 }),
            Next::Stop { reason: "banned".into() }
        );
        assert_eq!(
            next_after(SessionEnd::Close { code: 4001 }),
            Next::Reconnect { reason: "close_4001".into(), wait_ms: Some(0) }
        );
        assert_eq!(
            next_after(SessionEnd::Close { code: 4499 }),
            Next::Reconnect { reason: "close_4499".into(), wait_ms: Some(0) }
        );
        assert_eq!(next_after(SessionEnd::Close { code: 4500 }), Next::Stop { reason: "close_4500".into() });
        assert_eq!(
            next_after(SessionEnd::Close { code: 1001 }),
            Next::Reconnect { reason: "close_1001".into(), wait_ms: None }
        );
        assert_eq!(next_after(SessionEnd::Dropped), Next::Reconnect { reason: "dropped".into(), wait_ms: None });
    }
}
