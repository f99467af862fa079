//! Which partitions this node serves, as far as the rest of the node needs
//! to know: the newest epoch applied, the partitions whose users are
//! accepted, and the epoch acknowledged to the leader. The hand-off that
//! changes it is `crate::handoff`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::Gauge;
use tokio::sync::{Notify, watch};

/// What the WebSocket handler checks a token against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnershipView {
    /// Newest assignment epoch applied.
    pub epoch: u64,
    /// Partitions whose users are accepted here (served or being acquired).
    pub accepting: HashSet<u32>,
}

pub struct Ownership {
    view: RwLock<Arc<OwnershipView>>,
    epoch: watch::Sender<u64>,
    acked: AtomicU64,
    acked_gauge: Gauge,
    /// Wakes the heartbeat so an acknowledgement goes out at once.
    heartbeat_now: Arc<Notify>,
    /// Asks the assignment follower to read Redis now.
    fetch_now: Arc<Notify>,
}

impl Ownership {
    pub fn new(acked_gauge: Gauge, heartbeat_now: Arc<Notify>, fetch_now: Arc<Notify>) -> Self {
        Self {
            view: RwLock::new(Arc::new(OwnershipView::default())),
            epoch: watch::Sender::new(0),
            acked: AtomicU64::new(0),
            acked_gauge,
            heartbeat_now,
            fetch_now,
        }
    }

    pub fn view(&self) -> Arc<OwnershipView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_view(&self, view: OwnershipView) {
        let epoch = view.epoch;
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        self.epoch.send_if_modified(|e| std::mem::replace(e, epoch) != epoch);
    }

    /// Wakes the follower to read the assignment now.
    pub(crate) fn read_assignment_now(&self) {
        self.fetch_now.notify_one();
    }

    /// Waits (bounded) until an assignment of at least `epoch` is applied.
    pub async fn wait_for_epoch(&self, epoch: u64, timeout: Duration) -> bool {
        self.read_assignment_now();
        let mut rx = self.epoch.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|e| *e >= epoch)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn acked_epoch(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Acknowledges `epoch` in an immediate heartbeat (hand-off step 2).
    pub(crate) fn acknowledge(&self, epoch: u64) {
        if self.acked.fetch_max(epoch, Ordering::AcqRel) < epoch {
            self.acked_gauge.set(epoch as f64);
            self.heartbeat_now.notify_one();
        }
    }
}
