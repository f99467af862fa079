//! Redis faults, on a redis-server of each test's own:
//! - losing its data (`FLUSHALL`, or a restart without persistence): epochs
//!   only go forward, and the assignment is put back;
//! - a stall (`DEBUG SLEEP`) longer than the dead-after time: no node looks
//!   dead, so no assignment drops one;
//! - a leader that has only just started reading heartbeats publishes
//!   nothing until it has read them for the dead-after time.

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

/// The value of the sample `series` (name and labels) of a load balancer.
async fn metric(lb: &rtc_load_balancer::service::LbHandle, series: &str) -> f64 {
    let (_, text) = get_text(lb.admin_addr, "/metrics", &[]).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

/// `rtc_lb_partitions_moved_total` of a load balancer.
async fn partitions_moved(lb: &rtc_load_balancer::service::LbHandle) -> f64 {
    metric(lb, "rtc_lb_partitions_moved_total").await
}

/// Three fake nodes and a leader (with `extra` flags) on a Redis of the
/// test's own, once the assignment gives every partition to the nodes.
struct Steady {
    _redis: RedisServer,
    keys: Keys,
    conn: redis::aio::ConnectionManager,
    stop: CancellationToken,
    lb: rtc_load_balancer::service::LbHandle,
    assignment: Assignment,
    moved: f64,
}

impl Steady {
    async fn start(extra: &[&str]) -> Self {
        let redis = RedisServer::start().await.unwrap();
        let prefix = prefix();
        let keys = Keys::new(&prefix);
        let client = redis::Client::open(redis.url()).unwrap();
        // Long enough to wait out a DEBUG SLEEP.
        let mut conn = rtc_core::redis_io::connection_manager(&client, Duration::from_secs(10)).unwrap();
        let stop = CancellationToken::new();
        let nodes = FakeNodes { url: redis.url(), prefix: prefix.clone(), ..Default::default() };
        nodes.start(&["n0", "n1", "n2"], stop.clone());
        let lb = lb_on(&redis.url(), &prefix, "lb-a", extra).await;
        let mut assignment = None;
        until("all three own partitions", Duration::from_secs(10), async || {
            assignment = stored(&mut conn, &keys).await.filter(|a| a.nodes.len() == 3 && !a.has_unowned());
            assignment.is_some()
        })
        .await;
        let moved = partitions_moved(&lb).await;
        Self { _redis: redis, keys, conn, stop, lb, assignment: assignment.unwrap(), moved }
    }

    /// Nothing was published since, and no partition moved.
    async fn assert_unchanged(&mut self, what: &str) {
        assert_eq!(stored(&mut self.conn, &self.keys).await.unwrap(), self.assignment, "{what}");
        assert_eq!(partitions_moved(&self.lb).await, self.moved, "{what}: no partition moved");
    }

    async fn stop(self) {
        self.stop.cancel();
        self.lb.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_document_stored_at_the_served_epoch_is_adopted_once() {
    let mut steady = Steady::start(&[]).await;
    // Another document at the same epoch lands (a previous leader's write
    // that was late, say): nodes may have applied it, so the leader keeps
    // it rather than fight it every tick.
    let mut other = steady.assignment.clone();
    other.owners.rotate_left(1);
    let json = rtc_core::Document::to_json(&other);
    let _: () = redis::cmd("SET").arg(steady.keys.assignment()).arg(json).query_async(&mut steady.conn).await.unwrap();
    let adopted = r#"rtc_lb_assignment_repairs_total{outcome="adopted"}"#;
    until("the leader adopts it", Duration::from_secs(3), async || metric(&steady.lb, adopted).await >= 1.0).await;
    // Ticks are 100 ms apart in tests: ten more would each adopt again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&steady.lb, adopted).await, 1.0, "adopted once, not every tick");
    assert_eq!(steady.lb.shared.assignment().as_deref(), Some(&other), "the leader serves the stored document");
    assert_eq!(stored(&mut steady.conn, &steady.keys).await.as_ref(), Some(&other), "left in place");
    steady.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_dead_after_drops_no_node() {
    // A lease that outlasts the stall, as in production (5 s by default):
    // writes queued during the stall would still pass the fence after it.
    let mut steady = Steady::start(&["--lease-ttl-ms", "10000"]).await;
    // Redis stops answering anyone for 3.5 s: more than twice the time
    // after which TestLb moves a silent node's partitions (1.625 s).
    let _: () = redis::cmd("DEBUG").arg("SLEEP").arg("3.5").query_async(&mut steady.conn).await.unwrap();
    // Reads fail meanwhile (ingestion's timeout is 2.25 s), so the leader
    // holds for the dead-after time after they succeed again; then longer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    steady.assert_unchanged("after the stall").await;
    steady.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_just_started_reading_publishes_nothing_until_it_saw_everyone() {
    let redis = RedisServer::start().await.unwrap();
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = rtc_core::redis_io::connection_manager(&client, Duration::from_secs(1)).unwrap();
    let stop = CancellationToken::new();
    FakeNodes { url: redis.url(), prefix: prefix.clone(), ..Default::default() }
        .start(&["n0", "n1", "n2"], stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A fresh replica takes the lease at once (nobody holds it).
    let a = lb_on(&redis.url(), &prefix, "lb-a", &[]).await;
    let mut seen = Vec::new();
    until("an assignment with the three nodes", Duration::from_secs(10), async || {
        if let Some(a) = stored(&mut conn, &keys).await
            && seen.last() != Some(&a)
        {
            seen.push(a);
        }
        seen.last().is_some_and(|a| a.nodes.len() == 3)
    })
    .await;
    let first = &seen[0];
    assert_eq!((first.epoch, first.nodes.len()), (1, 3), "the first assignment already has every node: {seen:?}");
    stop.cancel();
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_that_cannot_be_read_are_not_taken_for_dead_nodes() {
    let mut steady = Steady::start(&[]).await;
    // Every heartbeat read now fails (WRONGTYPE), while the leader's other
    // Redis calls work: it cannot tell whether the nodes live.
    let stream = steady.keys.heartbeats();
    let _: () = redis::pipe().del(&stream).set(&stream, "not a stream").query_async(&mut steady.conn).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    steady.assert_unchanged("while reads fail").await;
    // Reads work again (the nodes' next heartbeats recreate the stream).
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut steady.conn).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    steady.assert_unchanged("once reads work again").await;
    steady.stop().await;
}

/// A Redis with ACLs: the default user off, rtc's user limited to rtc's
/// work (no admin or dangerous commands). With its credentials the load
/// balancer leads and publishes; without them it reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_is_all_rtc_needs_and_nobody_else_gets_in() {
    let acl =
        ["--user", "default", "off", "--user", "rtc", "on", ">s3cret", "~*", "&*", "+@all", "-@admin", "-@dangerous"];
    let redis = RedisServer::start_with(&acl).await.unwrap();
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let authed = redis.url().replace("redis://", "redis://rtc:s3cret@");
    let stop = CancellationToken::new();
    FakeNodes { url: authed.clone(), prefix: prefix.clone(), ..Default::default() }.start(&["n0"], stop.clone());
    let outsider = lb_on(&redis.url(), &prefix, "lb-x", &[]).await;
    let login = ["--redis-username", "rtc", "--redis-password", "s3cret"];
    let lb = lb_on(&redis.url(), &prefix, "lb-a", &login).await;
    let client = redis::Client::open(authed).unwrap();
    let mut conn = rtc_core::redis_io::connection_manager(&client, Duration::from_secs(1)).unwrap();
    until("the assignment is published", Duration::from_secs(10), async || {
        stored(&mut conn, &keys).await.is_some_and(|a| a.nodes.len() == 1)
    })
    .await;
    assert!(lb.shared.role.borrow().lease().is_some(), "the logged-in replica leads");
    assert!(outsider.shared.role.borrow().lease().is_none(), "the other reaches nothing");
    assert!(outsider.shared.assignment().is_none());
    // Nor can a client without the password read anything.
    let anonymous = redis::Client::open(redis.url()).unwrap();
    let refused = async {
        let mut conn = anonymous.get_multiplexed_async_connection().await?;
        redis::cmd("GET").arg(keys.assignment()).query_async::<Option<String>>(&mut conn).await
    };
    assert!(refused.await.is_err());
    stop.cancel();
    lb.shutdown().await;
    outsider.shutdown().await;
}
