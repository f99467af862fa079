//! What the hub hands one session: its queue of deliveries and the order to
//! close. One allocation per session, and no queue storage while the queue
//! is empty: most sessions are idle most of the time, and a channel would
//! hold its first block of slots for the session's whole life.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;

use crate::hub::{CloseCmd, Held};

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
}

/// The queue holds `capacity` deliveries already.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Mailbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            arrived: Notify::new(),
            close: OnceLock::new(),
            closing: Notify::new(),
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
        let mailbox = Mailbox::new(2);
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

    #[tokio::test(start_paused = true)]
    async fn a_waiting_session_wakes_for_a_delivery_and_for_a_close() {
        let budget = Budget::new(usize::MAX);
        let mailbox = Arc::new(Mailbox::new(4));
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
        assert!(mailbox.close(CloseCmd { reason: CloseReason::Drain, retry_after_ms: 0 }));
        assert!(!mailbox.close(CloseCmd { reason: CloseReason::Slow, retry_after_ms: 0 }), "first close wins");
        assert_eq!(closer.await.unwrap(), CloseReason::Drain);
    }
}
