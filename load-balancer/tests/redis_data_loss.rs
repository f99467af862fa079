//! Redis losing its data (`FLUSHALL`, or a restart without persistence) on
//! a redis-server of this test's own: epochs only go forward, and the
//! assignment is put back.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rtc_core::{Assignment, Keys};
use rtc_testkit::RedisServer;
use support::*;
use tokio_util::sync::CancellationToken;

async fn stored(conn: &mut redis::aio::ConnectionManager, keys: &Keys) -> Option<Assignment> {
    rtc_load_balancer::publish::load(conn, keys).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_the_assignment_is_back_with_a_newer_epoch() {
    let mut redis = RedisServer::start().await.unwrap();
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = rtc_core::redis_io::connection_manager(&client, Duration::from_secs(1)).unwrap();

    // Fake nodes acknowledge every epoch they see, as real ones do.
    let applied = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let nodes =
        FakeNodes { url: redis.url(), prefix: prefix.clone(), applied_epoch: applied.clone(), ..Default::default() };
    nodes.start(&["socket-0", "socket-1"], stop.clone());
    let a = lb_on(&redis.url(), &prefix, "lb-a", &[]).await;
    let mut first = None;
    until("an assignment is published", Duration::from_secs(5), async || {
        first = stored(&mut conn, &keys).await.filter(|a| a.nodes.len() == 2);
        first.is_some()
    })
    .await;
    let first = first.unwrap();
    applied.store(first.epoch, Ordering::Relaxed);
    let first_lease = a.shared.role.borrow().lease().cloned().unwrap();

    // FLUSHALL: the lease, the epoch counter and the assignment are gone.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let mut back = None;
    until("the assignment is written again", Duration::from_secs(3), async || {
        back = stored(&mut conn, &keys).await;
        back.is_some()
    })
    .await;
    let back = back.unwrap();
    assert!(back.epoch >= first.epoch, "epoch went back: {} after {}", back.epoch, first.epoch);
    assert_eq!(back.owners, first.owners, "same fleet, same owners");
    until("a is leader again", Duration::from_secs(3), async || a.shared.role.borrow().lease().is_some()).await;
    let lease = a.shared.role.borrow().lease().cloned().unwrap();
    assert!(lease.epoch > first_lease.epoch, "leader epoch went back: {} after {}", lease.epoch, first_lease.epoch);
    applied.store(back.epoch, Ordering::Relaxed);

    // The load balancer crashes and Redis restarts empty: a new replica
    // that never saw any of it must still publish above what nodes applied
    // (they ignore anything older).
    a.kill();
    redis.restart().await.unwrap();
    let b = lb_on(&redis.url(), &prefix, "lb-b", &[]).await;
    let mut fresh = None;
    until("the new leader publishes", Duration::from_secs(5), async || {
        fresh = stored(&mut conn, &keys).await.filter(|a| a.nodes.len() == 2);
        fresh.is_some()
    })
    .await;
    let fresh = fresh.unwrap();
    assert!(fresh.epoch > back.epoch, "epoch went back: {} after {}", fresh.epoch, back.epoch);
    stop.cancel();
    b.shutdown().await;
}
