//! Critical tasks and what happens when one ends.
//!
//! A service is a handful of long-running tasks (a server, a loop that
//! publishes, a consumer). If one of them ends before shutdown, because it
//! returned, panicked or was cancelled, the service is broken while looking
//! alive: a leader that still renews its lease but never publishes again.
//! So every such task is spawned through a [`Supervisor`]; the first one
//! that ends early is recorded as a [`TaskFailure`] (and logged), `/livez`
//! can report it, and the binary exits non-zero so the orchestrator
//! restarts it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A critical task ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("critical task `{task}` {how}")]
pub struct TaskFailure {
    pub task: &'static str,
    pub how: EndedEarly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedEarly {
    Returned,
    Panicked,
    Cancelled,
}

impl std::fmt::Display for EndedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Returned => "returned",
            Self::Panicked => "panicked",
            Self::Cancelled => "was cancelled",
        })
    }
}

/// Whether a critical task has ended early: cheap to clone, for `/livez`.
#[derive(Debug, Clone)]
pub struct Liveness {
    failure: watch::Receiver<Option<TaskFailure>>,
}

impl Liveness {
    /// The first critical task that ended early, if any.
    pub fn failure(&self) -> Option<TaskFailure> {
        self.failure.borrow().clone()
    }

    /// The `/livez` answer: 200 `ok`, or 503 naming the task that ended.
    pub fn livez(&self) -> (u16, String) {
        match self.failure() {
            None => (200, "ok".to_owned()),
            Some(failure) => (503, failure.to_string()),
        }
    }

    /// Waits for the first critical task to end early.
    pub async fn failed(&mut self) -> TaskFailure {
        match self.failure.wait_for(Option::is_some).await {
            Ok(failure) => failure.clone().unwrap_or(TaskFailure { task: "supervisor", how: EndedEarly::Returned }),
            // The supervisor is gone: nothing will fail any more.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Spawns and stops a service's critical tasks.
pub struct Supervisor {
    tasks: JoinSet<()>,
    handles: Vec<(&'static str, tokio::task::AbortHandle)>,
    failure: Arc<watch::Sender<Option<TaskFailure>>>,
    stopping: CancellationToken,
}

impl Supervisor {
    /// `stopping` is the service's shutdown token: tasks that end after it
    /// is cancelled are stopping, not failing.
    pub fn new(stopping: CancellationToken) -> Self {
        Self { tasks: JoinSet::new(), handles: Vec::new(), failure: Arc::new(watch::Sender::new(None)), stopping }
    }

    pub fn liveness(&self) -> Liveness {
        Liveness { failure: self.failure.subscribe() }
    }

    /// Spawns `task`, named `name` in logs and in the failure.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let mut guard =
            EndGuard { task: name, failure: self.failure.clone(), stopping: self.stopping.clone(), ended: false };
        let handle = self.tasks.spawn(async move {
            task.await;
            guard.ended = true;
            guard.report(EndedEarly::Returned);
        });
        self.handles.push((name, handle));
    }

    /// Aborts the task named `name`, as if it had ended on its own: for
    /// tests of what a service does then. False if there is none.
    pub fn abort_for_test(&self, name: &str) -> bool {
        let found: Vec<_> = self.handles.iter().filter(|(n, _)| *n == name).collect();
        found.iter().for_each(|(_, h)| h.abort());
        !found.is_empty()
    }

    /// Waits for the first critical task to end early.
    pub async fn failed(&self) -> TaskFailure {
        self.liveness().failed().await
    }

    /// Cancels the shutdown token, waits up to `grace` for every task to
    /// end, then aborts the rest.
    pub async fn stop(&mut self, grace: Duration) {
        self.stopping.cancel();
        let joined = tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} }).await;
        if joined.is_err() {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "tasks still running after the grace period: aborting");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Aborts every task at once, as a crash would (tests).
    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

/// Reports its task's end: from the task itself when it returns, from its
/// drop when it panics (the stack unwinds through it) or is cancelled.
struct EndGuard {
    task: &'static str,
    failure: Arc<watch::Sender<Option<TaskFailure>>>,
    stopping: CancellationToken,
    ended: bool,
}

impl EndGuard {
    fn report(&self, how: EndedEarly) {
        if self.stopping.is_cancelled() {
            return;
        }
        let failure = TaskFailure { task: self.task, how };
        tracing::error!(task = self.task, %how, "a critical task ended early: this process is broken and must exit");
        self.failure.send_if_modified(|first| {
            let none_yet = first.is_none();
            if none_yet {
                *first = Some(failure);
            }
            none_yet
        });
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.report(if std::thread::panicking() { EndedEarly::Panicked } else { EndedEarly::Cancelled });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_and_the_first_one_is_kept() {
        let mut supervisor = Supervisor::new(CancellationToken::new());
        let liveness = supervisor.liveness();
        supervisor.spawn("forever", std::future::pending());
        supervisor.spawn("loop", async {});
        let failure = supervisor.failed().await;
        assert_eq!(failure, TaskFailure { task: "loop", how: EndedEarly::Returned });
        assert_eq!(failure.to_string(), "critical task `loop` returned");
        supervisor.spawn("later", async {});
        tokio::task::yield_now().await;
        assert_eq!(liveness.failure().map(|f| f.task), Some("loop"), "the first failure stays");
    }

    #[tokio::test]
    async fn a_panicking_task_is_a_failure() {
        let supervisor = {
            let mut s = Supervisor::new(CancellationToken::new());
            s.spawn("publisher", async { panic!("boom") });
            s
        };
        assert_eq!(supervisor.failed().await, TaskFailure { task: "publisher", how: EndedEarly::Panicked });
    }

    #[tokio::test]
    async fn an_aborted_task_is_a_failure_but_stopping_is_not() {
        let mut crashed = Supervisor::new(CancellationToken::new());
        crashed.spawn("consumer", std::future::pending());
        crashed.spawn("other", std::future::pending());
        assert!(!crashed.abort_for_test("nobody"));
        assert!(crashed.abort_for_test("consumer"));
        assert_eq!(crashed.failed().await, TaskFailure { task: "consumer", how: EndedEarly::Cancelled });
        assert_eq!(crashed.liveness().livez(), (503, "critical task `consumer` was cancelled".to_owned()));
        crashed.abort_all();

        let stopping = CancellationToken::new();
        let mut clean = Supervisor::new(stopping.clone());
        let token = stopping.clone();
        clean.spawn("server", async move { token.cancelled().await });
        clean.spawn("stuck", std::future::pending());
        clean.stop(Duration::from_millis(50)).await;
        assert_eq!(clean.liveness().failure(), None, "ending on shutdown, or aborted by it, is no failure");
        assert_eq!(clean.liveness().livez(), (200, "ok".to_owned()));
    }
}
