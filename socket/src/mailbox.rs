//! What the hub hands one session: its queue of deliveries and the order to
//! close. One allocation per session, and no queue storage while the queue
//! is empty: most sessions are idle most of the time, and a channel would
//! hold its first block of slots for the session's whole life.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rtc_core::protocol::{CloseReason, MessageId};
use tokio::sync::Notify;

use crate::hub::{CloseCmd, Held};

/// How far a partition's records reached their sessions' queues: every
/// record below the mark was queued for each open session of its user (or
/// went to nobody). The hub raises it after each record's pushes; a move's
/// close reads it, and the session, once it has written its queue, tells
/// the client it has everything before it (`disconnect{through}`), so the
/// next node replays only what came after.
#[derive(Debug)]
pub struct Dispatched {
    partition: u32,
    /// The offset below which everything was queued; -1 while unknown.
    below: AtomicI64,
}

impl Dispatched {
    pub fn new(partition: u32) -> Arc<Self> {
        Arc::new(Self { partition, below: AtomicI64::new(-1) })
    }

    /// Where this node starts (or restarts) the partition: nothing below it
    /// is queued by this node, and no session here starts below it.
    pub fn start_at(&self, offset: i64) {
        self.below.store(offset, Ordering::Release);
    }

    /// Every record below `offset` has been queued.
    pub fn raise(&self, offset: i64) {
        self.below.fetch_max(offset, Ordering::AcqRel);
    }

    /// The mark as an id, once known.
    pub fn through(&self) -> Option<MessageId> {
        let below = self.below.load(Ordering::Acquire);
        (below >= 0).then(|| MessageId::new(self.partition, below))
    }
}

/// A bounded queue of deliveries plus a close order, shared by the hub (the
/// writer) and one session (the reader).
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Held>>,
    capacity: usize,
    /// Woken when a delivery arrives (keeps a permit if nobody waits).
    arrived: Notify,
    close: OnceLock<CloseCmd>,
    /// Woken when the close order is set.
    closing: Notify,
    /// The session's partition's mark, for a move's close.
    dispatched: Arc<Dispatched>,
}

/// The queue holds `capacity` deliveries already.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Mailbox {
    /// A mailbox for a session on the partition `dispatched` marks.
    pub fn new(capacity: usize, dispatched: Arc<Dispatched>) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            arrived: Notify::new(),
            close: OnceLock::new(),
            closing: Notify::new(),
            dispatched,
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Held>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a delivery, unless the queue is full (never waits).
    pub fn push(&self, held: Held) -> Result<(), Full> {
        {
            let mut queue = self.queue();
            if queue.len() >= self.capacity {
                return Err(Full);
            }
            queue.push_back(held);
        }
        self.arrived.notify_one();
        Ok(())
    }

    /// The oldest delivery, if any. The queue's storage is freed when it
    /// empties.
    pub fn try_recv(&self) -> Option<Held> {
        let mut queue = self.queue();
        let held = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        held
    }

    /// The oldest delivery, once there is one. Cancel-safe: a delivery is
    /// taken only by the call that returns it.
    pub async fn recv(&self) -> Held {
        loop {
            if let Some(held) = self.try_recv() {
                return held;
            }
            self.arrived.notified().await;
        }
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.queue().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Orders the session to close. Returns false if it was already told.
    pub fn close(&self, cmd: CloseCmd) -> bool {
        let first = self.close.set(cmd).is_ok();
        if first {
            self.closing.notify_one();
        }
        first
    }

    /// Orders the session to close because its user moves (a hand-off, a
    /// drain, a shutdown): with the partition's mark as of now, every
    /// record below it already in the queue, so it can go to the client as
    /// `through` once the queue is written. Returns false if already told.
    pub fn close_to_move(&self, reason: CloseReason, retry_after_ms: u64) -> bool {
        let through = self.dispatched.through();
        self.close(CloseCmd { reason, retry_after_ms, through })
    }

    pub fn requested(&self) -> Option<CloseCmd> {
        self.close.get().copied()
    }

    /// The close order, once there is one.
    pub async fn wait(&self) -> CloseCmd {
        loop {
            if let Some(cmd) = self.requested() {
                return cmd;
            }
            self.closing.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rtc_core::protocol::CloseReason;

    use super::*;
    use crate::hub::{Budget, Delivery};

    fn held(budget: &Arc<Budget>, offset: i64) -> Held {
        let frame = format!("0:{offset}").into();
        let d = Arc::new(Delivery { partition: 0, offset, ts_ms: 0, frame, buffered_at: tokio::time::Instant::now() });
        budget.hold(&d).unwrap()
    }

    #[tokio::test]
    async fn bounded_in_order_and_empty_holds_no_storage() {
        let budget = Budget::new(usize::MAX);
        let mailbox = Mailbox::new(2, Dispatched::new(0));
        assert_eq!(mailbox.queue().capacity(), 0);
        mailbox.push(held(&budget, 1)).unwrap();
        mailbox.push(held(&budget, 2)).unwrap();
        assert_eq!(mailbox.push(held(&budget, 3)), Err(Full));
        assert_eq!(mailbox.len(), 2);
        assert_eq!(mailbox.recv().await.offset, 1);
        assert_eq!(mailbox.try_recv().map(|h| h.offset), Some(2));
        assert!(mailbox.try_recv().is_none());
        assert_eq!(mailbox.queue().capacity(), 0, "drained: the storage is gone");
        assert_eq!(budget.used(), 0, "every byte given back");
    }

    #[test]
    fn a_move_carries_the_partitions_mark_as_of_its_close() {
        let mark = Dispatched::new(3);
        let mailbox = Mailbox::new(4, mark.clone());
        assert_eq!(mark.through(), None, "unknown before the partition starts");
        mark.start_at(10);
        mark.raise(12);
        mark.raise(11);
        assert_eq!(mark.through(), Some(MessageId::new(3, 12)), "it never goes back on a raise");
        assert!(mailbox.close_to_move(CloseReason::Rebalance, 7));
        mark.raise(20);
        let cmd = mailbox.requested().unwrap();
        assert_eq!((cmd.through, cmd.retry_after_ms), (Some(MessageId::new(3, 12)), 7), "read when told");
        let unstarted = Mailbox::new(4, Dispatched::new(3));
        assert!(unstarted.close_to_move(CloseReason::Drain, 0));
        assert_eq!(unstarted.requested().unwrap().through, None, "no mark before the partition starts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_session_wakes_for_a_delivery_and_for_a_close() {
        let budget = Budget::new(usize::MAX);
        let mailbox = Arc::new(Mailbox::new(4, Dispatched::new(0)));
        let reader = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.recv().await.offset }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        mailbox.push(held(&budget, 9)).unwrap();
        assert_eq!(reader.await.unwrap(), 9);
        // A recv dropped while waiting takes nothing.
        let _ = tokio::time::timeout(Duration::from_millis(5), mailbox.recv()).await;
        mailbox.push(held(&budget, 10)).unwrap();
        assert_eq!(mailbox.recv().await.offset, 10);
        let closer = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.wait().await.reason }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(mailbox.close(CloseCmd::new(CloseReason::Drain, 0)));
        assert!(!mailbox.close(CloseCmd::new(CloseReason::Slow, 0)), "first close wins");
        assert_eq!(closer.await.unwrap(), CloseReason::Drain);
    }
}
