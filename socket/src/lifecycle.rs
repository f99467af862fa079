//! The node's lifecycle, starting → ready → draining, and the drain: refuse
//! new sessions and disconnect the open ones, paced over the drain window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rtc_core::NodeState;
use rtc_core::protocol::CloseReason;
use tokio::sync::Notify;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pacing::Pacing;

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

pub struct Lifecycle {
    state: AtomicU8,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Wakes the heartbeat so a change is reported at once.
    heartbeat_now: Arc<Notify>,
    drain_window: Duration,
    pacing: Pacing,
}

impl Lifecycle {
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        heartbeat_now: Arc<Notify>,
        drain_window: Duration,
        pacing: Pacing,
    ) -> Self {
        Self { state: AtomicU8::new(STARTING), hub, metrics, heartbeat_now, drain_window, pacing }
    }

    pub fn state(&self) -> NodeState {
        match self.state.load(Ordering::Acquire) {
            STARTING => NodeState::Starting,
            READY => NodeState::Ready,
            _ => NodeState::Draining,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Acquire) == DRAINING
    }

    /// Started: ready for sessions (unless already draining).
    pub fn ready(&self) {
        if self.state.compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.heartbeat_now.notify_one();
        }
    }

    /// Starts draining (idempotent): refuse new sessions, report `draining`
    /// at once, and disconnect the remaining sessions paced over the drain
    /// window. Returns true the first time.
    pub fn begin_drain(self: &Arc<Self>) -> bool {
        if self.state.swap(DRAINING, Ordering::AcqRel) == DRAINING {
            return false;
        }
        self.metrics.draining.set(1.0);
        self.heartbeat_now.notify_one();
        tracing::info!(connections = self.hub.connections(), "draining");
        let me = self.clone();
        tokio::spawn(async move { me.drain_sessions().await });
        true
    }

    /// Drained: draining and no session left.
    pub fn drained(&self) -> bool {
        self.is_draining() && self.hub.connections() == 0
    }

    async fn drain_sessions(&self) {
        let start = tokio::time::Instant::now();
        let step = Duration::from_millis(20);
        loop {
            let open: Vec<_> = self.hub.sessions_on(None).into_iter().filter(|s| s.requested().is_none()).collect();
            if open.is_empty() {
                return;
            }
            let left = self.drain_window.saturating_sub(start.elapsed());
            // Spread what is left evenly over the rest of the window.
            let n = if left <= step {
                open.len()
            } else {
                (open.len() as f64 * step.as_secs_f64() / left.as_secs_f64()).ceil() as usize
            };
            self.pacing.disconnect(open.into_iter().take(n).collect(), CloseReason::Drain, 1).await;
            tokio::time::sleep(step).await;
        }
    }
}
