//! The server's view of reconnect time during a hand-off
//! (`rtc_socket_reconnect_seconds`).
//!
//! When an assignment moves a partition here from another node, the moment
//! this node applies that epoch is noted. A user of the partition welcomed
//! here within [`RECONNECT_WINDOW`] who then sends `resume` (a returning
//! client: new users arriving meanwhile, say during a ramp, do not resume)
//! is measured once, from that moment to the welcome. The clock starts
//! before the old node has even told its users to go, so the figure
//! includes the old node's pacing and the client's `retry_after_ms` jitter
//! as well as the route and connect: an upper bound of the
//! disconnect-to-reconnected time a client sees. Partitions this node gets
//! at its first assignment, or that had no owner, are not measured: nobody
//! was moved.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long after a takeover a welcome still counts as the user's
/// reconnect (later ones are new visits, not the hand-off).
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(10);

struct Takeover {
    at: Instant,
    /// Users already measured: a user who reconnects twice counts once.
    welcomed: HashSet<String>,
}

/// Recent takeovers, by partition.
#[derive(Default)]
pub struct Takeovers {
    partitions: Mutex<HashMap<u32, Takeover>>,
}

impl Takeovers {
    /// This node took `partition` over from another node at `at`.
    pub fn taken_over(&self, partition: u32, at: Instant) {
        let mut partitions = self.lock();
        partitions.retain(|_, t| t.at.elapsed() <= RECONNECT_WINDOW);
        partitions.insert(partition, Takeover { at, welcomed: HashSet::new() });
    }

    /// Time since `partition` was taken over, within the window.
    pub fn since(&self, partition: u32) -> Option<Duration> {
        let mut partitions = self.lock();
        let since = partitions.get(&partition)?.at.elapsed();
        if since > RECONNECT_WINDOW {
            partitions.remove(&partition);
            return None;
        }
        Some(since)
    }

    /// `user` of a partition taken over resumed: true the first time, so
    /// a user who reconnects twice counts once.
    pub fn resumed(&self, partition: u32, user: &str) -> bool {
        self.lock().get_mut(&partition).is_some_and(|t| t.welcomed.insert(user.to_owned()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Takeover>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_counts_once_within_the_window() {
        let t = Takeovers::default();
        assert_eq!(t.since(3), None, "not taken over");
        assert!(!t.resumed(3, "u1"));
        t.taken_over(3, Instant::now() - Duration::from_millis(200));
        let since = t.since(3).expect("measured");
        assert!(since >= Duration::from_millis(200) && since < Duration::from_secs(5), "{since:?}");
        assert!(t.resumed(3, "u1"));
        assert!(!t.resumed(3, "u1"), "second reconnect of the same user");
        assert!(t.resumed(3, "u2"));
        assert_eq!(t.since(4), None, "another partition");
        t.taken_over(5, Instant::now() - RECONNECT_WINDOW - Duration::from_millis(1));
        assert_eq!(t.since(5), None, "too late");
        assert!(!t.resumed(5, "u4"));
    }
}
