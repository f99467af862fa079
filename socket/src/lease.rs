//! The node's lease on its partitions.
//!
//! The leader gives a node's partitions to others once it has seen no
//! heartbeat from it for `dead_after + margin`. A node cut off from Redis
//! (but not from Kafka or its users) cannot hear that, so it must stop on
//! its own first: its lease lasts `dead_after - margin` from the moment it
//! *sent* its last heartbeat that Redis took (the entry cannot be older
//! than that), and when it runs out the node fences itself (see
//! `crate::handoff`): it stops consuming, commits nothing more, and
//! disconnects its users.
//!
//! Only heartbeat writes renew it: they are what the leader judges the node
//! by. A node that can read the assignment but not write its heartbeat is
//! dead to the leader, and must act so.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handoff::Event;

#[derive(Debug)]
pub struct NodeLease {
    valid_for: Duration,
    renewed_at: Mutex<Option<Instant>>,
}

impl NodeLease {
    /// A lease that has not been renewed yet: a node owns nothing until its
    /// first heartbeat is in Redis.
    pub fn new(valid_for: Duration) -> Self {
        Self { valid_for, renewed_at: Mutex::new(None) }
    }

    pub fn valid_for(&self) -> Duration {
        self.valid_for
    }

    /// A heartbeat sent at `sent_at` was written. True when this brings
    /// back a lease that had run out (or never started): the node serves
    /// again only on an assignment it reads from now on, so it should read
    /// one at once rather than at the next poll.
    pub fn renew(&self, sent_at: Instant) -> bool {
        let mut renewed = self.renewed_at.lock().unwrap_or_else(|p| p.into_inner());
        let lapsed = renewed.is_none_or(|r| Instant::now() >= r + self.valid_for);
        if renewed.is_none_or(|r| sent_at > r) {
            *renewed = Some(sent_at);
        }
        lapsed
    }

    /// When the lease runs out (`None`: never renewed).
    pub fn expires_at(&self) -> Option<Instant> {
        self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()).map(|r| r + self.valid_for)
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|e| now < e)
    }
}

/// Tells the reconciler the moment the lease runs out (`Event::LeaseExpired`),
/// once per expiry; it fences the node.
pub async fn watch(lease: std::sync::Arc<NodeLease>, events: mpsc::Sender<Event>, shutdown: CancellationToken) {
    let mut told_for: Option<Instant> = None;
    loop {
        let expiry = lease.expires_at();
        let wake = match expiry {
            Some(at) if Instant::now() >= at => {
                if told_for != Some(at) {
                    told_for = Some(at);
                    if events.send(Event::LeaseExpired).await.is_err() {
                        return;
                    }
                }
                // Expired: look again soon for a renewal (then a new expiry).
                Instant::now() + lease.valid_for / 10
            }
            Some(at) => at,
            None => Instant::now() + lease.valid_for / 10,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_lease_runs_from_the_send_time_of_the_newest_written_heartbeat() {
        let lease = NodeLease::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!lease.is_valid(t0), "not before the first heartbeat");
        assert!(lease.renew(t0), "the first renewal starts the lease");
        assert!(lease.is_valid(t0 + Duration::from_millis(4999)));
        assert!(!lease.is_valid(t0 + Duration::from_secs(5)));
        // A slow write that finishes after a newer one does not pull it back.
        assert!(!lease.renew(t0 + Duration::from_secs(2)), "a renewal of a valid lease");
        lease.renew(t0 + Duration::from_secs(1));
        assert_eq!(lease.expires_at(), Some(t0 + Duration::from_secs(7)));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(lease.renew(Instant::now()), "a renewal after the lease ran out brings it back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_reports_each_expiry_once() {
        let lease = std::sync::Arc::new(NodeLease::new(Duration::from_secs(5)));
        let (tx, mut rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        lease.renew(Instant::now());
        tokio::spawn(watch(lease.clone(), tx, stop.clone()));
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert!(rx.try_recv().is_err(), "still valid");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(matches!(rx.try_recv(), Ok(Event::LeaseExpired)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(rx.try_recv().is_err(), "told once");
        lease.renew(Instant::now());
        tokio::time::sleep(Duration::from_millis(5100)).await;
        assert!(matches!(rx.try_recv(), Ok(Event::LeaseExpired)), "a new expiry is told again");
        stop.cancel();
    }
}
