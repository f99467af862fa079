//! The hub: who is connected, what each user was recently sent, and how far
//! each owned partition has been delivered.
//!
//! - Every record for a user goes into that user's short resume buffer and
//!   onto the bounded queue of each of the user's open sessions. A session
//!   whose queue is full is slow: it is told to close and its messages stay
//!   in the buffer for `resume`.
//! - Per partition, the hub counts the sessions that still have to write
//!   each offset. The first offset some session has not written yet is the
//!   partition's commit point: committing it makes the next owner redeliver
//!   rather than skip (at-least-once; clients dedupe by message id).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use crate::frame::CloseReason;
use crate::metrics::Metrics;

const SHARDS: usize = 64;

/// One record, rendered once as a `message` frame and shared by every
/// session and buffer it goes to.
#[derive(Debug)]
pub struct Delivery {
    pub partition: u32,
    pub offset: i64,
    /// Kafka record timestamp: the start of the delivery latency.
    pub ts_ms: i64,
    pub frame: Utf8Bytes,
    pub buffered_at: Instant,
}

/// An order to close a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCmd {
    pub reason: CloseReason,
    pub retry_after_ms: u64,
}

/// How the hub (or a hand-off) tells a session to close. Set once; the
/// session wakes on the notify (which keeps a permit if it is not waiting).
#[derive(Debug, Default)]
pub struct SessionControl {
    close: OnceLock<CloseCmd>,
    notify: Notify,
}

impl SessionControl {
    /// Returns false if the session was already told to close.
    pub fn close(&self, cmd: CloseCmd) -> bool {
        let first = self.close.set(cmd).is_ok();
        if first {
            self.notify.notify_one();
        }
        first
    }

    pub fn requested(&self) -> Option<CloseCmd> {
        self.close.get().copied()
    }

    pub async fn wait(&self) -> CloseCmd {
        loop {
            if let Some(cmd) = self.requested() {
                return cmd;
            }
            self.notify.notified().await;
        }
    }
}

struct SessionLink {
    id: u64,
    queue: mpsc::Sender<Arc<Delivery>>,
    control: Arc<SessionControl>,
}

struct UserEntry {
    partition: u32,
    sessions: Vec<SessionLink>,
    buffer: VecDeque<Arc<Delivery>>,
}

/// What a new session receives from the hub.
pub struct Registration {
    pub id: u64,
    pub queue: mpsc::Receiver<Arc<Delivery>>,
    pub control: Arc<SessionControl>,
}

#[derive(Default)]
struct Progress {
    /// Offset after the last record dispatched.
    next: Option<i64>,
    /// Offset → sessions that still have to write it.
    pending: BTreeMap<i64, u32>,
    /// Offset → when it arrived for a user with no session here: it holds
    /// the commit point for `offline_hold` or until replayed on `resume`.
    held: BTreeMap<i64, Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub session_queue: usize,
    pub resume_buffer: usize,
    pub resume_ttl: Duration,
    /// How long a record for a user without a session holds the commit
    /// point (0: never). See `Timing::offline_hold_ms`.
    pub offline_hold: Duration,
}

pub struct Hub {
    shards: Box<[Mutex<HashMap<String, UserEntry>>]>,
    progress: Mutex<HashMap<u32, Progress>>,
    limits: HubLimits,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
    connections: AtomicU64,
    /// Seats taken by admitted connections still upgrading (see [`Seat`]).
    reserved: AtomicU64,
    /// Open sessions per partition, kept up to date on (un)registration so
    /// hand-offs can wait for a partition to empty without scanning.
    per_partition: Mutex<BTreeMap<u32, u64>>,
}

impl Hub {
    pub fn new(limits: HubLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            progress: Mutex::new(HashMap::new()),
            limits,
            metrics,
            next_session: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            per_partition: Mutex::new(BTreeMap::new()),
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<String, UserEntry>> {
        let i = (rtc_core::murmur2(user.as_bytes()) as u32 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn per_partition(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.per_partition.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Progress>> {
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Takes a seat for a connection about to upgrade, if sessions plus
    /// seats already taken leave room under `capacity`. Admission checks and
    /// registration happen at different times; the seat closes that gap so
    /// simultaneous upgrades cannot overshoot the capacity.
    pub fn reserve(self: &Arc<Self>, capacity: u64) -> Option<Seat> {
        let mut taken = self.reserved.load(Ordering::Acquire);
        loop {
            if self.connections() + taken >= capacity {
                return None;
            }
            match self.reserved.compare_exchange_weak(taken, taken + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(Seat { hub: self.clone() }),
                Err(now) => taken = now,
            }
        }
    }

    pub fn register(&self, user: &str, partition: u32) -> Registration {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.limits.session_queue.max(1));
        let control = Arc::new(SessionControl::default());
        let mut shard = self.shard(user);
        let entry = shard.entry(user.to_owned()).or_insert_with(|| UserEntry {
            partition,
            sessions: Vec::new(),
            buffer: VecDeque::new(),
        });
        entry.partition = partition;
        entry.sessions.push(SessionLink { id, queue: tx, control: control.clone() });
        drop(shard);
        *self.per_partition().entry(partition).or_default() += 1;
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.connections.set(n as f64);
        Registration { id, queue: rx, control }
    }

    /// Removes a session. What it still had queued is written off as
    /// delivered (it stays in the user's buffer for `resume`) unless the
    /// close hands its partition to another node, whose redelivery covers it.
    pub fn unregister(
        &self,
        user: &str,
        id: u64,
        mut queue: mpsc::Receiver<Arc<Delivery>>,
        reason: Option<CloseReason>,
    ) {
        let partition = {
            let mut shard = self.shard(user);
            shard.get_mut(user).map(|entry| {
                entry.sessions.retain(|s| s.id != id);
                entry.partition
            })
        };
        if let Some(p) = partition {
            let mut per_partition = self.per_partition();
            if let Some(n) = per_partition.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_partition.remove(&p);
                }
            }
        }
        queue.close();
        if !reason.is_some_and(CloseReason::hands_off) {
            while let Ok(d) = queue.try_recv() {
                self.written(d.partition, d.offset);
            }
        }
        let n = self.connections.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.metrics.connections.set(n as f64);
    }

    /// Sends one record to `user`: buffer, then every open session. Returns
    /// the number of sessions it was queued for.
    pub fn dispatch(&self, user: &str, delivery: Arc<Delivery>) -> usize {
        let (p, o) = (delivery.partition, delivery.offset);
        let mut shard = self.shard(user);
        let entry = shard.entry(user.to_owned()).or_insert_with(|| UserEntry {
            partition: p,
            sessions: Vec::new(),
            buffer: VecDeque::new(),
        });
        trim_buffer(&mut entry.buffer, self.limits.resume_buffer.saturating_sub(1), self.limits.resume_ttl);
        if self.limits.resume_buffer > 0 {
            entry.buffer.push_back(delivery.clone());
        }
        let sessions = entry.sessions.len();
        {
            let mut progress = self.progress();
            let progress = progress.entry(p).or_default();
            progress.next = Some(progress.next.map_or(o + 1, |n| n.max(o + 1)));
            if sessions > 0 {
                *progress.pending.entry(o).or_default() += sessions as u32;
            } else if !self.limits.offline_hold.is_zero() && self.limits.resume_buffer > 0 {
                // Kept only in the resume buffer: committing past it now
                // would lose it if the partition moves before the user comes.
                progress.held.insert(o, Instant::now());
            }
        }
        let mut queued = 0;
        for session in &entry.sessions {
            match session.queue.try_send(delivery.clone()) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if session.control.close(CloseCmd { reason: CloseReason::Slow, retry_after_ms: 1000 }) {
                        self.metrics.slow_drops.increment(1);
                    }
                    self.written(p, o);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.written(p, o),
            }
        }
        queued
    }

    /// A record that goes to nobody (bad key, too old) still moves the
    /// partition's next offset.
    pub fn skipped(&self, partition: u32, offset: i64) {
        let mut progress = self.progress();
        let progress = progress.entry(partition).or_default();
        progress.next = Some(progress.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A session wrote (or gave up on) `offset` of `partition`.
    pub fn written(&self, partition: u32, offset: i64) {
        let mut progress = self.progress();
        if let Some(progress) = progress.get_mut(&partition)
            && let std::collections::btree_map::Entry::Occupied(mut e) = progress.pending.entry(offset)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// A record replayed from the buffer on `resume`: it holds nothing now.
    pub fn replayed(&self, partition: u32, offset: i64) {
        if let Some(progress) = self.progress().get_mut(&partition) {
            progress.held.remove(&offset);
        }
    }

    /// The offset to commit for `partition`: the first one not yet written
    /// to every session that should have it (a user without a session counts
    /// for `offline_hold`), else the next one to consume. `None` when nothing
    /// was dispatched since the partition was gained.
    pub fn commit_point(&self, partition: u32) -> Option<i64> {
        let mut progress = self.progress();
        let progress = progress.get_mut(&partition)?;
        let hold = self.limits.offline_hold;
        progress.held.retain(|_, at| at.elapsed() < hold);
        let pending = progress.pending.keys().next().copied();
        let held = progress.held.keys().next().copied();
        match (pending, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b).or(progress.next),
        }
    }

    /// Forgets the delivery progress of a partition handed to another node.
    pub fn forget_partition(&self, partition: u32) {
        self.progress().remove(&partition);
    }

    /// Buffered messages for `user` after `after` (all if `None`), oldest
    /// first, within the resume window.
    pub fn buffered_after(&self, user: &str, partition: u32, after: Option<i64>) -> Vec<Arc<Delivery>> {
        let shard = self.shard(user);
        let Some(entry) = shard.get(user) else { return Vec::new() };
        let ttl = self.limits.resume_ttl;
        entry
            .buffer
            .iter()
            .filter(|d| d.partition == partition && after.is_none_or(|a| d.offset > a) && d.buffered_at.elapsed() < ttl)
            .cloned()
            .collect()
    }

    /// Close handles of the open sessions whose users live on `partition`
    /// (every partition when `None`).
    pub fn sessions_on(&self, partition: Option<u32>) -> Vec<Arc<SessionControl>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for entry in shard.values().filter(|e| partition.is_none_or(|p| e.partition == p)) {
                out.extend(entry.sessions.iter().map(|s| s.control.clone()));
            }
        }
        out
    }

    /// Open sessions per partition (for heartbeats and the assignment's
    /// preference to move the emptiest partitions).
    pub fn partition_connections(&self) -> BTreeMap<u32, u64> {
        self.per_partition().clone()
    }

    /// Open sessions on one partition.
    pub fn connections_on(&self, partition: u32) -> u64 {
        self.per_partition().get(&partition).copied().unwrap_or(0)
    }

    /// Drops users with no session whose buffers have expired.
    pub fn sweep(&self) {
        let ttl = self.limits.resume_ttl;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, entry| {
                trim_buffer(&mut entry.buffer, usize::MAX, ttl);
                !entry.sessions.is_empty() || !entry.buffer.is_empty()
            });
        }
    }
}

/// A reserved place for one session; given back when dropped (after the
/// session registered, or when the upgrade failed).
pub struct Seat {
    hub: Arc<Hub>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.hub.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps at most `keep` entries, none older than `ttl`.
fn trim_buffer(buffer: &mut VecDeque<Arc<Delivery>>, keep: usize, ttl: Duration) {
    while buffer.len() > keep || buffer.front().is_some_and(|d| d.buffered_at.elapsed() >= ttl) {
        buffer.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(queue: usize) -> Hub {
        Hub::new(
            HubLimits {
                session_queue: queue,
                resume_buffer: 4,
                resume_ttl: Duration::from_secs(60),
                offline_hold: Duration::ZERO,
            },
            Arc::new(Metrics::new()),
        )
    }

    fn delivery(p: u32, o: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            partition: p,
            offset: o,
            ts_ms: 0,
            frame: Utf8Bytes::from(format!("{p}:{o}")),
            buffered_at: Instant::now(),
        })
    }

    #[test]
    fn commit_point_waits_for_every_session() {
        let hub = hub(8);
        let mut a = hub.register("u1", 3);
        let mut b = hub.register("u1", 3);
        assert_eq!(hub.commit_point(3), None);
        assert_eq!(hub.dispatch("u1", delivery(3, 10)), 2);
        assert_eq!(hub.dispatch("u1", delivery(3, 11)), 2);
        assert_eq!(hub.commit_point(3), Some(10));
        let d = a.queue.try_recv().unwrap();
        hub.written(d.partition, d.offset);
        assert_eq!(hub.commit_point(3), Some(10), "b has not written 10 yet");
        let d = b.queue.try_recv().unwrap();
        hub.written(d.partition, d.offset);
        assert_eq!(hub.commit_point(3), Some(11));
        // A rebalance close keeps 11 pending for the next owner...
        hub.unregister("u1", b.id, b.queue, Some(CloseReason::Rebalance));
        assert_eq!(hub.commit_point(3), Some(11));
        // ...a client close writes it off (it stays in the buffer).
        hub.unregister("u1", a.id, a.queue, None);
        assert_eq!(hub.commit_point(3), Some(11), "b's copy still pending");
        assert_eq!(hub.connections(), 0);
        // Offline users only advance the next offset.
        assert_eq!(hub.dispatch("u2", delivery(4, 7)), 0);
        assert_eq!(hub.commit_point(4), Some(8));
        hub.forget_partition(3);
        assert_eq!(hub.commit_point(3), None);
    }

    #[test]
    fn a_record_for_a_user_on_the_way_holds_the_commit_point_until_replayed() {
        // A partition just moved here: its users are reconnecting, so the
        // records that arrive first find no session and wait in the buffer.
        let hub = Hub::new(
            HubLimits {
                session_queue: 8,
                resume_buffer: 4,
                resume_ttl: Duration::from_secs(60),
                offline_hold: Duration::from_secs(3600),
            },
            Arc::new(Metrics::new()),
        );
        assert_eq!(hub.dispatch("u1", delivery(5, 20)), 0);
        assert_eq!(hub.dispatch("u2", delivery(5, 21)), 0);
        // Moving the partition on now must make the next owner redeliver
        // 20 and 21 (they exist only in this node's buffer).
        assert_eq!(hub.commit_point(5), Some(20));
        // u1 arrives and resumes: 20 is replayed and no longer holds.
        hub.register("u1", 5);
        let replay: Vec<i64> = hub.buffered_after("u1", 5, None).iter().map(|d| d.offset).collect();
        assert_eq!(replay, vec![20]);
        hub.replayed(5, 20);
        assert_eq!(hub.commit_point(5), Some(21), "u2 is still on the way");
        hub.replayed(5, 21);
        assert_eq!(hub.commit_point(5), Some(22));
        hub.forget_partition(5);
        assert_eq!(hub.commit_point(5), None);
    }

    #[test]
    fn a_full_queue_marks_the_session_slow_and_never_blocks() {
        let hub = hub(2);
        let reg = hub.register("u1", 0);
        for o in 0..5 {
            hub.dispatch("u1", delivery(0, o));
        }
        assert_eq!(reg.control.requested().map(|c| c.reason), Some(CloseReason::Slow));
        // The queue stayed bounded and the dropped offsets do not hold back
        // the commit point beyond what is still queued.
        assert_eq!(reg.queue.len(), 2);
        assert_eq!(hub.commit_point(0), Some(0));
        hub.unregister("u1", reg.id, reg.queue, Some(CloseReason::Slow));
        assert_eq!(hub.commit_point(0), Some(5));
        // The buffer kept the newest four for resume.
        let kept: Vec<i64> = hub.buffered_after("u1", 0, None).iter().map(|d| d.offset).collect();
        assert_eq!(kept, vec![1, 2, 3, 4]);
        let after: Vec<i64> = hub.buffered_after("u1", 0, Some(2)).iter().map(|d| d.offset).collect();
        assert_eq!(after, vec![3, 4]);
    }

    #[test]
    fn sessions_by_partition_and_counts() {
        let hub = hub(4);
        let _a = hub.register("u1", 1);
        let _b = hub.register("u2", 1);
        let _c = hub.register("u3", 2);
        assert_eq!(hub.sessions_on(Some(1)).len(), 2);
        assert_eq!(hub.sessions_on(None).len(), 3);
        assert_eq!(hub.partition_connections(), BTreeMap::from([(1, 2), (2, 1)]));
        let control = &hub.sessions_on(Some(2))[0];
        assert!(control.close(CloseCmd { reason: CloseReason::Drain, retry_after_ms: 5 }));
        assert!(!control.close(CloseCmd { reason: CloseReason::Slow, retry_after_ms: 5 }), "first close wins");
    }

    #[test]
    fn seats_bound_admissions_until_sessions_register() {
        let hub = Arc::new(hub(4));
        let a = hub.reserve(2).expect("first seat");
        let b = hub.reserve(2).expect("second seat");
        assert!(hub.reserve(2).is_none(), "both seats taken while upgrading");
        drop(b);
        let _registered = hub.register("u1", 0);
        drop(a);
        assert!(hub.reserve(2).is_some(), "one session, one free place");
        let _second = hub.register("u2", 0);
        assert!(hub.reserve(2).is_none(), "full");
    }

    #[test]
    fn sweep_drops_only_idle_users_without_buffers() {
        let hub = Hub::new(
            HubLimits { session_queue: 4, resume_buffer: 4, resume_ttl: Duration::ZERO, offline_hold: Duration::ZERO },
            Arc::new(Metrics::new()),
        );
        let _a = hub.register("online", 1);
        hub.dispatch("offline", delivery(1, 1));
        hub.sweep();
        assert_eq!(hub.partition_connections(), BTreeMap::from([(1, 1)]));
        assert!(hub.buffered_after("offline", 1, None).is_empty());
    }
}
