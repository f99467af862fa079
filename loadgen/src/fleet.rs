//! The fleet: starts and stops users so the number of active users follows
//! the profile. Users leaving are picked at random; a user that stopped for
//! good (told not to come back, out of attempts) is replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::user::{self, UserSlot};

/// Joins and leaves needed to go from `active` users to `target`.
pub fn plan(active: usize, target: usize) -> (usize, usize) {
    (target.saturating_sub(active), active.saturating_sub(target))
}

pub struct Fleet {
    shared: Arc<Shared>,
    active: Vec<UserSlot>,
    tasks: JoinSet<()>,
}

impl Fleet {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared, active: Vec::new(), tasks: JoinSet::new() }
    }

    /// Users not leaving and not stopped.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Joins or leaves users to reach `target` (bounded by `--max-users`).
    pub fn adjust(&mut self, target: u64) {
        while self.tasks.try_join_next().is_some() {}
        self.active.retain(|slot| !slot.done.load(Ordering::Acquire));
        let target = target.min(self.shared.config.max_users) as usize;
        let (joins, leaves) = plan(self.active.len(), target);
        for _ in 0..joins {
            let idx = self.shared.ledger().join();
            let slot = UserSlot { idx, leave: CancellationToken::new(), done: Arc::new(AtomicBool::new(false)) };
            self.tasks.spawn(user::run(self.shared.clone(), slot.clone()));
            self.active.push(slot);
        }
        let mut rng = rand::rng();
        for _ in 0..leaves {
            let slot = self.active.swap_remove(rng.random_range(0..self.active.len()));
            self.send_away(&slot);
        }
    }

    fn send_away(&self, slot: &UserSlot) {
        // The ledger first: the producer stops picking this user at once.
        self.shared.ledger().leave(slot.idx);
        slot.leave.cancel();
    }

    /// Every user leaves; waits for them (bounded), then stops the rest.
    pub async fn leave_all(&mut self, bound: Duration) {
        for slot in std::mem::take(&mut self.active) {
            self.send_away(&slot);
        }
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(bound, all_done).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "users still running after the bound: stopping them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan(0, 10), (10, 0));
        assert_eq!(plan(10, 4), (0, 6));
        assert_eq!(plan(5, 5), (0, 0));
    }
}
