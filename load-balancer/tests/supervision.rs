//! A critical task that ends early is not hidden: the handle reports it
//! (the binary exits non-zero on it) and `/livez` turns 503, so the
//! replica is restarted instead of renewing its lease without publishing.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::Duration;

use rtc_core::supervisor::{EndedEarly, TaskFailure};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_ends_fails_the_replica() {
    let prefix = prefix();
    let lb = lb(&prefix, "lb-a", &[]).await;
    assert_eq!(get_text(lb.admin_addr, "/livez", &[]).await, (200, "ok".to_owned()));
    assert!(lb.abort_task_for_test("coordinator"));
    let failure = tokio::time::timeout(Duration::from_secs(5), lb.failed()).await.expect("reported");
    assert_eq!(failure, TaskFailure { task: "coordinator", how: EndedEarly::Cancelled });
    let (status, body) = get_text(lb.admin_addr, "/livez", &[]).await;
    assert_eq!((status, body.as_str()), (503, "critical task `coordinator` was cancelled"));
    lb.shutdown().await;
}
