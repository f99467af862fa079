//! What this node knows of the other socket nodes, from the heartbeat
//! stream: which assignment epoch each has acknowledged, and whether it is
//! still alive. A gained partition starts consuming only once every live
//! peer acknowledged the epoch that moved it (its old owner has committed).
//!
//! A peer is dead only once this node watched it stay silent for the
//! dead-after time. A node cut off from Redis hears nobody: when it comes
//! back, its peers' last heartbeats are old, but that silence was its own,
//! and taking them for dead started partitions their old owners were still
//! consuming (the chaos suite's `node-cutoff` caught two such overlaps).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use redis::aio::ConnectionManager;
use rtc_core::Heartbeat;
use rtc_core::redis_io::{HeartbeatBatch, HeartbeatCursor};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy)]
struct Peer {
    acked_epoch: u64,
    last_seen: Instant,
}

/// Reads of the heartbeat stream further apart than this are a gap in this
/// node's view (the cursor blocks 500 ms at most per read).
const READ_GAP: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct View {
    peers: HashMap<String, Peer>,
    /// The last successful read of the stream.
    last_read: Option<Instant>,
    /// The first read after the last gap: silence is judged from here on.
    reading_since: Option<Instant>,
}

impl View {
    /// Whether `peer` may be alive at `now`: always, unless this node has
    /// been reading the stream without a gap and heard nothing from it for
    /// `dead_after`.
    fn alive(&self, peer: &Peer, now: Instant, dead_after: Duration) -> bool {
        match (self.last_read, self.reading_since) {
            (Some(last), Some(since)) if now.saturating_duration_since(last) <= READ_GAP => {
                now.saturating_duration_since(peer.last_seen.max(since)) < dead_after
            }
            _ => true,
        }
    }
}

pub struct Peers {
    me: String,
    dead_after: Duration,
    view: Mutex<View>,
    changed: watch::Sender<u64>,
}

impl Peers {
    pub fn new(me: impl Into<String>, dead_after: Duration) -> Self {
        Self { me: me.into(), dead_after, view: Mutex::new(View::default()), changed: watch::Sender::new(0) }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful read of the stream at `at` (with or without
    /// heartbeats in it).
    pub fn read(&self, at: Instant) {
        let mut view = self.view();
        if view.last_read.is_none_or(|last| at.saturating_duration_since(last) > READ_GAP) {
            view.reading_since = Some(at);
        }
        view.last_read = Some(at);
    }

    /// Records a heartbeat seen at `at`.
    pub fn observe(&self, hb: &Heartbeat, at: Instant) {
        if hb.node_id == self.me {
            return;
        }
        let mut view = self.view();
        let peer = view.peers.entry(hb.node_id.clone()).or_insert(Peer { acked_epoch: 0, last_seen: at });
        peer.acked_epoch = peer.acked_epoch.max(hb.assignment_epoch);
        peer.last_seen = peer.last_seen.max(at);
        drop(view);
        self.changed.send_modify(|v| *v += 1);
    }

    /// True when every peer that may be alive at `now` (see [`View::alive`])
    /// has acknowledged `epoch` or a later one.
    pub fn all_acked(&self, epoch: u64, now: Instant) -> bool {
        let view = self.view();
        view.peers.values().filter(|p| view.alive(p, now, self.dead_after)).all(|p| p.acked_epoch >= epoch)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until every live peer acknowledged `epoch`, or `timeout`.
    /// Returns false on timeout.
    pub async fn wait_for_ack(&self, epoch: u64, timeout: Duration) -> bool {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if self.all_acked(epoch, Instant::now()) {
                return true;
            }
            tokio::select! {
                _ = changes.changed() => {}
                // Peers also "ack" by dying: re-check as time passes.
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(deadline) => return self.all_acked(epoch, Instant::now()),
            }
        }
    }

    /// Tails the heartbeat stream from `dead_after` ago until shutdown.
    pub async fn follow(
        &self,
        mut conn: ConnectionManager,
        key: String,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) {
        let since = crate::kafka::now_ms().saturating_sub(self.dead_after.as_millis() as i64).max(0) as u64;
        let cursor = HeartbeatCursor::since(key, since, 1000, Duration::from_millis(500));
        let on_batch = |entries: HeartbeatBatch| {
            let now = Instant::now();
            self.read(now);
            for entry in entries {
                match entry {
                    Ok(hb) => self.observe(&hb, now),
                    Err(e) => metrics.count("rtc_socket_invalid_peer_heartbeats_total", "reason", e.kind()),
                }
            }
        };
        let on_error = |e: &redis::RedisError| tracing::debug!(error = %e, "reading peer heartbeats failed");
        cursor.follow(&mut conn, shutdown.cancelled(), on_batch, on_error).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_core::NodeState;

    fn hb(node: &str, epoch: u64) -> Heartbeat {
        Heartbeat {
            v: 1,
            node_id: node.into(),
            url: "ws://x/ws".into(),
            state: NodeState::Ready,
            seq: 1,
            sent_at_ms: 0,
            assignment_epoch: epoch,
            connections: 0,
            capacity: 1,
            cpu: 0.0,
            memory: 0.0,
            mps_in: 0.0,
            mps_out: 0.0,
            p95_latency_ms: 0.0,
            kafka_lag: 0,
            partition_connections: None,
        }
    }

    #[test]
    fn acks_from_live_peers_only() {
        let peers = Peers::new("me", Duration::from_secs(3));
        let t0 = Instant::now();
        for s in 0..=4 {
            peers.read(t0 + Duration::from_secs(s));
        }
        assert!(peers.all_acked(5, t0), "no peers: nothing to wait for");
        peers.observe(&hb("me", 0), t0);
        assert!(peers.all_acked(5, t0), "self is not a peer");
        peers.observe(&hb("a", 4), t0);
        peers.observe(&hb("b", 5), t0);
        assert!(!peers.all_acked(5, t0));
        peers.observe(&hb("a", 5), t0 + Duration::from_secs(1));
        assert!(peers.all_acked(5, t0 + Duration::from_secs(1)));
        // An older heartbeat arriving late does not lower the ack.
        peers.observe(&hb("a", 3), t0 + Duration::from_secs(1));
        assert!(peers.all_acked(5, t0 + Duration::from_secs(1)));
        // b stops sending at epoch 5; once dead it no longer holds epoch 6.
        peers.observe(&hb("a", 6), t0 + Duration::from_secs(2));
        assert!(!peers.all_acked(6, t0 + Duration::from_secs(2)));
        assert!(peers.all_acked(6, t0 + Duration::from_secs(4)));
    }

    #[test]
    fn silence_heard_while_cut_off_is_not_death() {
        let peers = Peers::new("me", Duration::from_secs(6));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        peers.read(at(0));
        peers.observe(&hb("a", 2), at(0));
        // This node reads nothing for 20 s (cut off from Redis): a's
        // silence is unknown, not death; a must still acknowledge.
        assert!(!peers.all_acked(3, at(20)));
        // Reading again: a is judged from there, dead after 6 s more of
        // silence heard.
        peers.read(at(20));
        assert!(!peers.all_acked(3, at(21)));
        for s in 21..=26 {
            peers.read(at(s));
        }
        assert!(peers.all_acked(3, at(26)));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_on_ack_or_timeout() {
        let peers = std::sync::Arc::new(Peers::new("me", Duration::from_secs(60)));
        peers.observe(&hb("a", 1), Instant::now());
        assert!(!peers.wait_for_ack(2, Duration::from_secs(5)).await, "times out");
        let p = peers.clone();
        let waiter = tokio::spawn(async move { p.wait_for_ack(2, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        peers.observe(&hb("a", 2), Instant::now());
        assert!(waiter.await.unwrap());
    }
}
