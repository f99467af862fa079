//! Paced disconnects: the node's one schedule for telling sessions to move.
//!
//! A scale-out or a drain moves every partition a node loses in the same
//! epoch, and each partition's release runs on its own. Paced per
//! partition, thousands of users were told to reconnect in the same few
//! milliseconds, more than the nodes they go to admit in a second (the soak
//! measured a reconnect P99 of 2.8 s). So the rate is the node's: every
//! release, and the drain, take their turns from one schedule.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc_core::protocol::CloseReason;
use tokio::time::Instant;

use crate::mailbox::Mailbox;

/// How sessions are told to close: at most `rate` per second across the
/// node, each with its own random `retry_after_ms` up to `jitter_ms`, so
/// their reconnects do not arrive all at once. Clones share the schedule.
#[derive(Debug, Clone)]
pub struct Pacing {
    gap: Duration,
    jitter_ms: u64,
    /// When the next paced disconnect may go out.
    next_turn: Arc<Mutex<Instant>>,
}

impl Pacing {
    pub fn new(rate: u64, jitter_ms: u64) -> Self {
        let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        Self { gap, jitter_ms, next_turn: Arc::new(Mutex::new(Instant::now())) }
    }

    /// Closes `sessions` one per `share` turns of the node's schedule, in
    /// turns reserved together: a partition's users go one after another,
    /// not interleaved with every other partition's, so they reach the new
    /// owner close together and its catch-up reads the partition's log
    /// once for them. `share` is the number of nodes sending users to the
    /// same node at once (1 when this one is alone): together they send it
    /// no more than the rate. Returns once the last one was told.
    pub async fn disconnect(&self, sessions: Vec<Arc<Mailbox>>, reason: CloseReason, share: u32) {
        let gap = self.gap * share.max(1);
        let first = self.reserve(sessions.len(), gap);
        for (i, session) in sessions.into_iter().enumerate() {
            let at = first + gap * i as u32;
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            session.close_to_move(reason, self.retry_after_ms());
        }
    }

    /// Closes `sessions` at once, off the schedule (a fenced node may not
    /// wait: another node is about to own their partition), each told to
    /// retry after `retry` plus the jitter, so they arrive once the
    /// partition has moved.
    pub fn disconnect_now(&self, sessions: Vec<Arc<Mailbox>>, reason: CloseReason, retry: Duration) {
        let retry = retry.as_millis() as u64;
        for session in sessions {
            session.close_to_move(reason, retry + self.retry_after_ms());
        }
    }

    /// Reserves `n` consecutive turns `gap` apart on the node's schedule;
    /// returns the first. An idle schedule owes nothing: its first turn is
    /// now.
    fn reserve(&self, n: usize, gap: Duration) -> Instant {
        let mut next = self.next_turn.lock().unwrap_or_else(|p| p.into_inner());
        let first = (*next).max(Instant::now());
        *next = first + gap * n as u32;
        first
    }

    fn retry_after_ms(&self) -> u64 {
        if self.jitter_ms == 0 { 0 } else { rand::random_range(0..=self.jitter_ms) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(n: usize) -> Vec<Arc<Mailbox>> {
        (0..n).map(|_| Arc::new(Mailbox::new(4, crate::mailbox::Dispatched::new(0)))).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_holds_across_every_batch_of_the_node() {
        // Two partitions released at once, 10 sessions each, at 100/s: the
        // last of the 20 goes out 19 gaps after the first, not 9.
        let pacing = Pacing::new(100, 0);
        let (a, b) = (sessions(10), sessions(10));
        let start = Instant::now();
        let (p1, p2) = (pacing.clone(), pacing.clone());
        let (ra, rb) = (a.clone(), b.clone());
        let both = tokio::spawn(async move {
            tokio::join!(p1.disconnect(ra, CloseReason::Rebalance, 1), p2.disconnect(rb, CloseReason::Rebalance, 1))
        });
        // Each batch takes its turns together: the first is done before
        // the second starts.
        tokio::time::sleep(Duration::from_millis(95)).await;
        assert!(a.iter().all(|s| s.requested().is_some()), "the first batch went in its turns");
        assert!(b.iter().all(|s| s.requested().is_none()), "the second waits for its own");
        both.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(190));
        assert!(b.iter().all(|s| s.requested().is_some()), "every session was told");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_schedule_lets_the_first_disconnect_go_at_once() {
        let pacing = Pacing::new(10, 0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        pacing.disconnect(sessions(1), CloseReason::Drain, 1).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no debt from the idle time, no wait");
        pacing.disconnect(sessions(2), CloseReason::Drain, 1).await;
        assert_eq!(start.elapsed(), Duration::from_millis(200), "then one per 100 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_giver_among_three_takes_a_third_of_the_rate() {
        let pacing = Pacing::new(100, 0);
        let start = Instant::now();
        pacing.disconnect(sessions(4), CloseReason::Rebalance, 3).await;
        assert_eq!(start.elapsed(), Duration::from_millis(90), "three turns of 10 ms between each");
        pacing.disconnect(sessions(2), CloseReason::Rebalance, 1).await;
        assert_eq!(start.elapsed(), Duration::from_millis(130), "the schedule goes on after the share");
    }

    #[tokio::test(start_paused = true)]
    async fn disconnect_now_skips_the_schedule_and_adds_the_jitter_to_the_retry() {
        let pacing = Pacing::new(1, 50);
        let batch = sessions(30);
        pacing.disconnect_now(batch.clone(), CloseReason::Rebalance, Duration::from_secs(2));
        for s in &batch {
            let cmd = s.requested().expect("told at once");
            assert!((2000..=2050).contains(&cmd.retry_after_ms), "{}", cmd.retry_after_ms);
        }
    }
}
