//! The hub: who is connected, which partitions accept sessions, how far each
//! owned partition has been consumed, and a small per-user cache of recent
//! messages.
//!
//! Every record for a user goes onto the bounded queue of each of the user's
//! open sessions. A session whose queue is full is closed as `slow`; it
//! resumes from its last id, and the log (see `crate::catchup`) serves the
//! gap. Nothing here decides whether a message is lost: the Kafka log is the
//! history, and the per-user cache only saves a log read when a gap is
//! already in memory.
//!
//! Lock order: the partition table, then a user shard. Registration checks
//! that its partition accepts sessions under the partition table's lock, and
//! a release flips that flag under the same lock, so a release sees every
//! session that registered before it and none registers after it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use rtc_core::protocol::{CloseReason, MessageId};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::mailbox::{Dispatched, Full, Mailbox};

use crate::metrics::{Evicted, Metrics};

const SHARDS: usize = 64;

/// One record, rendered once as a `message` frame and shared by every
/// session and cache entry it goes to.
#[derive(Debug)]
pub struct Delivery {
    pub partition: u32,
    pub offset: i64,
    /// Kafka record timestamp: the start of the delivery latency.
    pub ts_ms: i64,
    pub frame: Utf8Bytes,
    pub buffered_at: Instant,
}

/// The node-wide byte budget for records held in memory: cached for
/// resumes and queued for sessions. What does not fit is not held: a cache
/// is cleared, a session is closed as `slow`. The log covers both.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), limit })
    }

    /// Holds one more copy of `delivery` if its bytes fit.
    pub fn hold(self: &Arc<Self>, delivery: &Arc<Delivery>) -> Option<Held> {
        let n = delivery.frame.len();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(n) > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(used, used + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Held { delivery: delivery.clone(), budget: self.clone() }),
                Err(now) => used = now,
            }
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// A record counted against the [`Budget`] until dropped.
#[derive(Debug)]
pub struct Held {
    delivery: Arc<Delivery>,
    budget: Arc<Budget>,
}

impl std::ops::Deref for Held {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.delivery.frame.len(), Ordering::AcqRel);
    }
}

/// An order to close a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCmd {
    pub reason: CloseReason,
    pub retry_after_ms: u64,
    /// Every record of the user below this was queued when the order was
    /// given (see [`Dispatched`]); sent as the `disconnect`'s `through` if
    /// the session writes its queue before closing.
    pub through: Option<MessageId>,
}

impl CloseCmd {
    /// An order that claims nothing about what the client has.
    pub const fn new(reason: CloseReason, retry_after_ms: u64) -> Self {
        Self { reason, retry_after_ms, through: None }
    }
}

/// A session that cannot take what is sent to it (its queue is full, or
/// the node's memory budget is spent) resumes from the log a moment later.
const TOO_SLOW: CloseCmd = CloseCmd::new(CloseReason::Slow, 1000);

struct SessionLink {
    id: u64,
    mailbox: Arc<Mailbox>,
}

struct UserEntry {
    partition: u32,
    sessions: Vec<SessionLink>,
    /// Recent messages, oldest first: a cache in front of the log.
    cache: VecDeque<Held>,
    /// The cache holds every message of this user from this offset on.
    complete_from: i64,
}

impl UserEntry {
    fn new(partition: u32, complete_from: i64) -> Self {
        Self { partition, sessions: Vec::new(), cache: VecDeque::new(), complete_from }
    }

    /// Empties the cache: it holds nothing from the next offset on.
    fn clear(&mut self, next: i64) {
        self.cache = VecDeque::new();
        self.complete_from = self.complete_from.max(next);
    }

    /// Keeps at most `keep` cached messages, none older than `ttl`; what is
    /// evicted moves the completeness mark past it. An emptied cache gives
    /// its storage back: most users are quiet most of the time, and a
    /// burst's capacity kept for life would grow every user's entry to the
    /// largest burst it ever had.
    fn trim(&mut self, keep: usize, ttl: Duration) {
        while self.cache.len() > keep || self.cache.front().is_some_and(|d| d.buffered_at.elapsed() >= ttl) {
            if let Some(d) = self.cache.pop_front() {
                self.complete_from = self.complete_from.max(d.offset + 1);
            }
        }
        if self.cache.is_empty() && self.cache.capacity() > 0 {
            self.cache = VecDeque::new();
        }
    }
}

/// What a new session receives from the hub.
pub struct Registration {
    pub id: u64,
    /// The consumer's position when the session registered: every record
    /// from here on reaches the session's queue.
    pub live_from: i64,
    pub mailbox: Arc<Mailbox>,
}

/// The partition is not (or no longer) served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("partition {0} does not accept sessions here")]
pub struct NotAccepting(pub u32);

#[derive(Debug)]
struct PartitionEntry {
    accepting: bool,
    sessions: u64,
    /// The consumer's position: the offset after the last record
    /// dispatched, or where consumption starts. Known from the moment the
    /// partition accepts sessions.
    next: Option<i64>,
    /// Behind `next` while a record is being queued: everything below it
    /// is in its sessions' queues. Shared with the sessions' mailboxes.
    dispatched: Arc<Dispatched>,
}

/// The entry of `partition`, created on first use.
fn entry_of(partitions: &mut BTreeMap<u32, PartitionEntry>, partition: u32) -> &mut PartitionEntry {
    partitions.entry(partition).or_insert_with(|| PartitionEntry {
        accepting: false,
        sessions: 0,
        next: None,
        dispatched: Dispatched::new(partition),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub session_queue: usize,
    /// Recent messages cached per user.
    pub resume_buffer: usize,
    pub resume_ttl: Duration,
}

pub struct Hub {
    shards: Box<[Mutex<HashMap<String, UserEntry>>]>,
    budget: Arc<Budget>,
    partitions: Mutex<BTreeMap<u32, PartitionEntry>>,
    /// Bumped whenever a partition starts accepting or consuming (admission
    /// and sessions waiting for their partition watch it).
    changes: watch::Sender<u64>,
    limits: HubLimits,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
    connections: AtomicU64,
    /// Seats taken by admitted connections still upgrading (see [`Seat`]).
    reserved: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    pub fn new(limits: HubLimits, budget: Arc<Budget>, metrics: Arc<Metrics>) -> Self {
        metrics.memory_budget.set(budget.limit() as f64);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            budget,
            partitions: Mutex::new(BTreeMap::new()),
            changes: watch::Sender::new(0),
            limits,
            metrics,
            next_session: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
        }
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, HashMap<String, UserEntry>> {
        let i = (rtc_core::murmur2(user.as_bytes()) as u32 as usize) % SHARDS;
        lock(&self.shards[i])
    }

    /// The memory budget the hub's records count against.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Bytes of records held in memory now (see [`Budget`]).
    pub fn held_bytes(&self) -> usize {
        self.budget.used()
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

    /// `partition` accepts sessions from now on (it was gained); its
    /// consumption will start at `start`.
    pub fn accept(&self, partition: u32, start: i64) {
        {
            let mut partitions = lock(&self.partitions);
            let entry = entry_of(&mut partitions, partition);
            entry.accepting = true;
            if entry.next.is_none() {
                entry.next = Some(start);
                entry.dispatched.start_at(start);
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// `partition` accepts no more sessions (it is being released). Every
    /// session registered before this call is visible to [`Hub::sessions_on`].
    pub fn stop_accepting(&self, partition: u32) {
        if let Some(p) = lock(&self.partitions).get_mut(&partition) {
            p.accepting = false;
        }
    }

    pub fn accepts(&self, partition: u32) -> bool {
        lock(&self.partitions).get(&partition).is_some_and(|p| p.accepting)
    }

    /// Registers a session, if its partition accepts sessions at this moment.
    pub fn register(&self, user: &str, partition: u32) -> Result<Registration, NotAccepting> {
        let mut partitions = lock(&self.partitions);
        let entry = partitions.get_mut(&partition).filter(|p| p.accepting).ok_or(NotAccepting(partition))?;
        let live_from = entry.next.ok_or(NotAccepting(partition))?;
        entry.sessions += 1;
        // The cache fills from the live start on.
        let complete_from = live_from;
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::new(self.limits.session_queue, entry.dispatched.clone()));
        {
            let mut shard = self.shard(user);
            let user_entry = shard.entry(user.to_owned()).or_insert_with(|| UserEntry::new(partition, complete_from));
            if user_entry.partition != partition {
                // Repartitioned: what is cached belongs to another partition.
                *user_entry = UserEntry::new(partition, complete_from);
            }
            user_entry.sessions.push(SessionLink { id, mailbox: mailbox.clone() });
        }
        drop(partitions);
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.connections.set(n as f64);
        Ok(Registration { id, live_from, mailbox })
    }

    /// Removes a session.
    pub fn unregister(&self, user: &str, id: u64) {
        let partition = {
            let mut shard = self.shard(user);
            shard.get_mut(user).map(|entry| {
                entry.sessions.retain(|s| s.id != id);
                entry.partition
            })
        };
        if let Some(p) = partition
            && let Some(entry) = lock(&self.partitions).get_mut(&p)
        {
            entry.sessions = entry.sessions.saturating_sub(1);
        }
        let n = self.connections.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.metrics.connections.set(n as f64);
    }

    /// The consumer starts `partition` at `offset`: the live start of every
    /// session waiting for it, and where its users' caches become complete.
    pub fn start_partition(&self, partition: u32, offset: i64) {
        {
            let mut partitions = lock(&self.partitions);
            let entry = entry_of(&mut partitions, partition);
            entry.next = Some(offset);
            entry.dispatched.start_at(offset);
        }
        for shard in self.shards.iter() {
            for entry in lock(shard).values_mut().filter(|e| e.partition == partition) {
                entry.cache.clear();
                entry.complete_from = offset;
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// The consumer's position on `partition`: every record below it has
    /// been dispatched (or was before this node's start on it). `None` when
    /// the partition does not accept sessions here.
    pub fn position(&self, partition: u32) -> Option<i64> {
        lock(&self.partitions).get(&partition).and_then(|p| p.next)
    }

    /// Waits until `partition` accepts sessions (or `timeout`).
    pub async fn accepting(&self, partition: u32, timeout: Duration) -> bool {
        self.wait_for(timeout, || self.accepts(partition).then_some(())).await.is_some()
    }

    async fn wait_for<T>(&self, timeout: Duration, check: impl Fn() -> Option<T>) -> Option<T> {
        let mut changes = self.changes.subscribe();
        let wait = async {
            loop {
                if let Some(v) = check() {
                    return Some(v);
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Moves `partition`'s position past `offset` (dispatched or skipped);
    /// returns its mark, to raise once the record is queued.
    fn advance(&self, partition: u32, offset: i64) -> Arc<Dispatched> {
        let mut partitions = lock(&self.partitions);
        let entry = entry_of(&mut partitions, partition);
        entry.next = Some(entry.next.map_or(offset + 1, |n| n.max(offset + 1)));
        entry.dispatched.clone()
    }

    /// Sends one record to `user`: the cache, then every open session.
    /// Returns the number of sessions it was queued for.
    pub fn dispatch(&self, user: &str, delivery: Arc<Delivery>) -> usize {
        let (p, o) = (delivery.partition, delivery.offset);
        // The position moves before the record is queued: a session that
        // registers in between replays it from the log (below its live
        // start) and also gets it live; it drops the second copy by id.
        let dispatched = self.advance(p, o);
        let queued = self.queue(user, &delivery);
        dispatched.raise(o + 1);
        queued
    }

    /// [`Hub::dispatch`] after the position moved: the cache, then the
    /// sessions' queues.
    fn queue(&self, user: &str, delivery: &Arc<Delivery>) -> usize {
        let (p, o) = (delivery.partition, delivery.offset);
        let mut shard = self.shard(user);
        let entry = shard.entry(user.to_owned()).or_insert_with(|| UserEntry::new(p, o));
        if entry.partition != p {
            *entry = UserEntry::new(p, o);
        }
        if self.limits.resume_buffer > 0 {
            entry.trim(self.limits.resume_buffer - 1, self.limits.resume_ttl);
            match self.budget.hold(delivery) {
                Some(held) => entry.cache.push_back(held),
                None => {
                    entry.clear(o + 1);
                    self.metrics.budget_evictions.increment(Evicted::Cache);
                }
            }
        } else {
            entry.complete_from = entry.complete_from.max(o + 1);
        }
        let mut queued = 0;
        for session in &entry.sessions {
            let Some(held) = self.budget.hold(delivery) else {
                // Over the budget: this session resumes from the log.
                if session.mailbox.close(TOO_SLOW) {
                    self.metrics.budget_evictions.increment(Evicted::Queue);
                }
                continue;
            };
            match session.mailbox.push(held) {
                Ok(()) => queued += 1,
                Err(Full) => {
                    session.mailbox.close(TOO_SLOW);
                }
            }
        }
        queued
    }

    /// A record that goes to nobody (bad key) still moves the position.
    pub fn skipped(&self, partition: u32, offset: i64) {
        self.advance(partition, offset).raise(offset + 1);
    }

    /// Forgets a partition handed to another node: its position, and the
    /// cached messages of its users (the next owner has the log).
    pub fn forget_partition(&self, partition: u32) {
        {
            let mut partitions = lock(&self.partitions);
            if let Some(entry) = partitions.get_mut(&partition) {
                entry.next = None;
                if !entry.accepting && entry.sessions == 0 {
                    partitions.remove(&partition);
                }
            }
        }
        for shard in self.shards.iter() {
            lock(shard).retain(|_, e| e.partition != partition || !e.sessions.is_empty());
        }
    }

    /// The cached messages of `user` in `[from, to)`, oldest first, if the
    /// cache is known to hold every one of them.
    pub fn cached(&self, user: &str, partition: u32, from: i64, to: i64) -> Option<Vec<Arc<Delivery>>> {
        let mut shard = self.shard(user);
        let entry = shard.get_mut(user).filter(|e| e.partition == partition)?;
        entry.trim(usize::MAX, self.limits.resume_ttl);
        if entry.complete_from > from {
            return None;
        }
        Some(entry.cache.iter().filter(|d| d.offset >= from && d.offset < to).map(|h| h.delivery.clone()).collect())
    }

    /// Close handles of the open sessions whose users live on `partition`
    /// (every partition when `None`).
    pub fn sessions_on(&self, partition: Option<u32>) -> Vec<Arc<Mailbox>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for entry in shard.values().filter(|e| partition.is_none_or(|p| e.partition == p)) {
                out.extend(entry.sessions.iter().map(|s| s.mailbox.clone()));
            }
        }
        out
    }

    /// Open sessions per partition (for heartbeats and the assignment's
    /// preference to move the emptiest partitions).
    pub fn partition_connections(&self) -> BTreeMap<u32, u64> {
        lock(&self.partitions).iter().filter(|(_, e)| e.sessions > 0).map(|(p, e)| (*p, e.sessions)).collect()
    }

    /// Open sessions on one partition.
    pub fn connections_on(&self, partition: u32) -> u64 {
        lock(&self.partitions).get(&partition).map_or(0, |e| e.sessions)
    }

    /// Drops users with no session whose cached messages have expired. Past
    /// three quarters of the budget, offline users' caches go first (the
    /// log has their messages), so online users' caches and queues fit.
    pub fn sweep(&self) {
        let ttl = self.limits.resume_ttl;
        let tight = self.budget.used() > self.budget.limit() / 4 * 3;
        for shard in self.shards.iter() {
            lock(shard).retain(|_, entry| {
                entry.trim(usize::MAX, ttl);
                if tight && entry.sessions.is_empty() && !entry.cache.is_empty() {
                    self.metrics.budget_evictions.increment(Evicted::Cache);
                    return false;
                }
                !entry.sessions.is_empty() || !entry.cache.is_empty()
            });
        }
        self.metrics.held_bytes.set(self.budget.used() as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(queue: usize) -> Hub {
        Hub::new(
            HubLimits { session_queue: queue, resume_buffer: 4, resume_ttl: Duration::from_secs(60) },
            Budget::new(usize::MAX),
            Arc::new(Metrics::new()),
        )
    }

    /// A hub whose caches hold nothing past the next sweep.
    fn hub_where_messages_expire_at_once() -> Hub {
        Hub::new(
            HubLimits { session_queue: 4, resume_buffer: 4, resume_ttl: Duration::ZERO },
            Budget::new(usize::MAX),
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

    fn offsets(d: Option<Vec<Arc<Delivery>>>) -> Option<Vec<i64>> {
        d.map(|v| v.iter().map(|d| d.offset).collect())
    }

    #[test]
    fn sessions_register_only_while_their_partition_accepts() {
        let hub = hub(8);
        assert_eq!(hub.register("u1", 3).err(), Some(NotAccepting(3)));
        hub.accept(3, 0);
        let a = hub.register("u1", 3).expect("accepting");
        hub.stop_accepting(3);
        assert_eq!(hub.register("u2", 3).err(), Some(NotAccepting(3)), "a release admits nobody");
        assert_eq!(hub.sessions_on(Some(3)).len(), 1, "the release sees the session registered before it");
        hub.unregister("u1", a.id);
        assert_eq!(hub.connections(), 0);
        assert_eq!(hub.connections_on(3), 0);
    }

    #[test]
    fn the_position_is_the_start_then_past_every_record_dispatched() {
        let hub = hub(8);
        assert_eq!(hub.position(5), None);
        hub.accept(5, 100);
        assert_eq!(hub.position(5), Some(100), "known from acceptance on");
        assert_eq!(hub.register("u0", 5).unwrap().live_from, 100);
        hub.start_partition(5, 100);
        assert_eq!(hub.position(5), Some(100));
        hub.dispatch("u1", delivery(5, 100));
        hub.skipped(5, 101);
        assert_eq!(hub.position(5), Some(102));
        hub.forget_partition(5);
        assert_eq!(hub.position(5), None);
    }

    #[test]
    fn the_cache_serves_a_gap_only_when_it_holds_all_of_it() {
        let hub = hub(8);
        hub.accept(2, 10);
        let reg = hub.register("u1", 2).unwrap();
        assert_eq!(offsets(hub.cached("u1", 2, 0, 10)), None, "from before the start here: unknown");
        assert_eq!(offsets(hub.cached("u1", 2, 10, 10)), Some(vec![]), "nothing yet from the start");
        hub.start_partition(2, 10);
        for o in [10, 12, 13] {
            hub.dispatch("u1", delivery(2, o));
        }
        assert_eq!(offsets(hub.cached("u1", 2, 11, 14)), Some(vec![12, 13]));
        assert_eq!(offsets(hub.cached("u1", 2, 9, 14)), None, "9 is from before the start here");
        for o in [14, 15, 16] {
            hub.dispatch("u1", delivery(2, o));
        }
        // Four kept: 13..=16; 12 evicted, so a gap from 11 or 12 is not held.
        assert_eq!(offsets(hub.cached("u1", 2, 12, 17)), None);
        assert_eq!(offsets(hub.cached("u1", 2, 13, 16)), Some(vec![13, 14, 15]));
        assert_eq!(offsets(hub.cached("u1", 3, 13, 16)), None, "another partition");
        hub.unregister("u1", reg.id);
    }

    #[test]
    fn a_full_queue_closes_the_session_as_slow_and_never_blocks() {
        let hub = hub(2);
        hub.accept(0, 0);
        let reg = hub.register("u1", 0).unwrap();
        for o in 0..5 {
            hub.dispatch("u1", delivery(0, o));
        }
        assert_eq!(reg.mailbox.requested().map(|c| c.reason), Some(CloseReason::Slow));
        assert_eq!(reg.mailbox.len(), 2, "the queue stays bounded");
    }

    #[test]
    fn sessions_by_partition_and_counts() {
        let hub = hub(4);
        hub.accept(1, 0);
        hub.accept(2, 0);
        let _a = hub.register("u1", 1).unwrap();
        let _b = hub.register("u2", 1).unwrap();
        let _c = hub.register("u3", 2).unwrap();
        assert_eq!(hub.sessions_on(Some(1)).len(), 2);
        assert_eq!(hub.sessions_on(None).len(), 3);
        assert_eq!(hub.partition_connections(), BTreeMap::from([(1, 2), (2, 1)]));
        let control = &hub.sessions_on(Some(2))[0];
        assert!(control.close(CloseCmd::new(CloseReason::Drain, 5)));
        assert!(!control.close(CloseCmd::new(CloseReason::Slow, 5)), "first close wins");
    }

    #[test]
    fn seats_bound_admissions_until_sessions_register() {
        let hub = Arc::new(hub(4));
        hub.accept(0, 0);
        let a = hub.reserve(2).expect("first seat");
        let b = hub.reserve(2).expect("second seat");
        assert!(hub.reserve(2).is_none(), "both seats taken while upgrading");
        drop(b);
        let _registered = hub.register("u1", 0).unwrap();
        drop(a);
        assert!(hub.reserve(2).is_some(), "one session, one free place");
        let _second = hub.register("u2", 0).unwrap();
        assert!(hub.reserve(2).is_none(), "full");
    }

    #[test]
    fn an_emptied_cache_gives_its_storage_back() {
        let hub = hub_where_messages_expire_at_once();
        hub.accept(1, 0);
        let _session = hub.register("u", 1).unwrap();
        hub.dispatch("u", delivery(1, 0));
        let capacity = || hub.shard("u").get("u").map(|e| e.cache.capacity());
        assert!(capacity() > Some(0), "the message is cached");
        hub.sweep();
        assert_eq!(capacity(), Some(0), "expired: the online user's entry stays, its cache storage goes");
    }

    #[test]
    fn sweep_drops_only_idle_users_without_cached_messages() {
        let hub = hub_where_messages_expire_at_once();
        hub.accept(1, 0);
        let _a = hub.register("online", 1).unwrap();
        hub.dispatch("offline", delivery(1, 1));
        hub.sweep();
        assert_eq!(hub.partition_connections(), BTreeMap::from([(1, 1)]));
        assert_eq!(hub.sessions_on(None).len(), 1);
    }

    #[test]
    fn the_budget_bounds_cached_and_queued_bytes_and_gives_them_back() {
        // Frames here are "p:o" (3 or 4 bytes); the budget holds 20 bytes.
        let budget = Budget::new(20);
        let hub = Hub::new(
            HubLimits { session_queue: 100, resume_buffer: 100, resume_ttl: Duration::from_secs(60) },
            budget.clone(),
            Arc::new(Metrics::new()),
        );
        hub.accept(1, 0);
        let online = hub.register("online", 1).unwrap();
        for o in 0..3 {
            // Cached and queued: two copies of 3 bytes each.
            assert_eq!(hub.dispatch("online", delivery(1, o)), 1);
        }
        assert_eq!(budget.used(), 18);
        // Offline users' records no longer fit: not cached, never over.
        for (i, o) in (3..10).enumerate() {
            hub.dispatch(&format!("offline-{i}"), delivery(1, o));
            assert!(budget.used() <= 20, "{} bytes held", budget.used());
        }
        assert_eq!(budget.used(), 18);
        // The next record for the online user does not fit its cache: the
        // cache is dropped (and no longer trusted), the queue takes it.
        assert_eq!(hub.dispatch("online", delivery(1, 10)), 1);
        assert_eq!(offsets(hub.cached("online", 1, 0, 11)), None, "its cache was dropped, not trusted");
        assert_eq!(budget.used(), 13, "three 3-byte and one 4-byte queued");
        // Cached again, but its queue no longer fits: the session is closed
        // as slow (it resumes from the log).
        assert_eq!(hub.dispatch("online", delivery(1, 11)), 0);
        assert_eq!(online.mailbox.requested().map(|c| c.reason), Some(CloseReason::Slow));
        assert_eq!(budget.used(), 17);
        // Reading the queue and dropping the session gives every byte back.
        let Registration { id, mailbox, .. } = online;
        while mailbox.try_recv().is_some() {}
        drop(mailbox);
        hub.unregister("online", id);
        hub.forget_partition(1);
        assert_eq!(budget.used(), 0);
    }
}
