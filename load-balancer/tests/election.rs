//! Leader election against a real Redis (started by `scripts/test`).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use rtc_core::Keys;
use rtc_load_balancer::election::{ElectionError, Elector, LeaseStore, Role};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL")
        .expect("RTC_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts Redis")
}

fn keys() -> Keys {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    Keys::new(format!("el{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

async fn conn() -> MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis up")
}

#[tokio::test]
async fn the_lease_fences_an_ex_leader() {
    let keys = keys();
    let store = LeaseStore::new(&keys, Duration::from_secs(10));
    let (mut a, mut b) = (conn().await, conn().await);

    let first = store.try_acquire(&mut a, "lb-a", 1).await.unwrap().expect("free lease");
    assert_eq!(store.try_acquire(&mut b, "lb-b", 1).await.unwrap(), None, "held");
    assert_eq!(store.current(&mut b).await.unwrap(), Some(first.clone()));
    assert!(store.renew(&mut a, &first).await.unwrap());
    let ttl: i64 = b.pttl(keys.leader()).await.unwrap();
    assert!(ttl > 9_000, "renewed to the full TTL: {ttl}");

    // A fenced write lands and announces itself in one step.
    let mut pubsub = redis::Client::open(redis_url()).unwrap().get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys.assignment_events()).await.unwrap();
    store
        .fenced_set(&mut a, &first, &keys.assignment(), "doc-1", Some((&keys.assignment_events(), "1")))
        .await
        .unwrap();
    let message: String = {
        use futures_util::StreamExt;
        pubsub.on_message().next().await.unwrap().get_payload().unwrap()
    };
    assert_eq!(message, "1");

    // The lease runs out while A is paused; B takes over with a higher epoch.
    let _: () = b.del(keys.leader()).await.unwrap();
    let second = store.try_acquire(&mut b, "lb-b", 1).await.unwrap().expect("free again");
    assert!(second.epoch > first.epoch);
    // Everything A still tries is refused, and nothing of B's is touched.
    let refused = store.fenced_set(&mut a, &first, &keys.assignment(), "stale", None).await;
    assert!(matches!(refused, Err(ElectionError::Fenced)), "{refused:?}");
    assert!(!store.renew(&mut a, &first).await.unwrap());
    assert!(!store.release(&mut a, &first).await.unwrap());
    let doc: String = b.get(keys.assignment()).await.unwrap();
    assert_eq!(doc, "doc-1");
    assert_eq!(store.current(&mut a).await.unwrap(), Some(second.clone()));
    store.fenced_set(&mut b, &second, &keys.assignment(), "doc-2", None).await.unwrap();
    assert!(store.release(&mut b, &second).await.unwrap());
    assert_eq!(store.current(&mut a).await.unwrap(), None);
    assert!(store.try_acquire(&mut a, "bad id!", 1).await.is_err());
}

#[tokio::test]
async fn epochs_only_go_forward_after_redis_loses_the_counter() {
    let keys = keys();
    let store = LeaseStore::new(&keys, Duration::from_secs(10));
    let mut a = conn().await;
    let first = store.try_acquire(&mut a, "lb-a", 1).await.unwrap().unwrap();
    // Redis loses everything; the replica remembers it saw `first`.
    let _: () = a.del(&[keys.leader(), keys.leader_epoch()]).await.unwrap();
    let second = store.try_acquire(&mut a, "lb-a", first.epoch + 1).await.unwrap().unwrap();
    assert_eq!(second.epoch, first.epoch + 1);
    let _: () = a.del(keys.leader()).await.unwrap();
    let third = store.try_acquire(&mut a, "lb-b", 1).await.unwrap().unwrap();
    assert_eq!(third.epoch, second.epoch + 1, "the counter continues from the floor");
}

#[tokio::test]
async fn a_forward_write_never_puts_another_document_under_a_stored_epoch() {
    use rtc_load_balancer::election::ForwardWrite;
    let keys = keys();
    let store = LeaseStore::new(&keys, Duration::from_secs(10));
    let mut a = conn().await;
    let lease = store.try_acquire(&mut a, "lb-a", 1).await.unwrap().unwrap();
    let key = keys.assignment();
    let doc = |epoch: u64, body: &str| format!(r#"{{"epoch":{epoch},"body":"{body}"}}"#);
    let write = async |conn: &mut MultiplexedConnection, epoch: u64, body: &str| {
        store.fenced_set_forward(conn, &lease, &key, &doc(epoch, body), epoch, None).await.unwrap()
    };
    assert_eq!(write(&mut a, 5, "x").await, ForwardWrite::Written);
    assert_eq!(write(&mut a, 5, "x").await, ForwardWrite::Unchanged, "a retry of the same write");
    // A write that timed out but landed, then recomputed differently.
    assert_eq!(write(&mut a, 5, "y").await, ForwardWrite::Stale);
    assert_eq!(write(&mut a, 4, "z").await, ForwardWrite::Stale);
    let stored: String = a.get(&key).await.unwrap();
    assert_eq!(stored, doc(5, "x"));
    assert_eq!(write(&mut a, 6, "y").await, ForwardWrite::Written);
    // Lost (FLUSHALL) or garbage: written again.
    let _: () = a.del(&key).await.unwrap();
    assert_eq!(write(&mut a, 6, "y").await, ForwardWrite::Written);
    let _: () = a.set(&key, "not json").await.unwrap();
    assert_eq!(write(&mut a, 6, "y").await, ForwardWrite::Written);
    // Only the lease holder writes.
    let _: () = a.del(keys.leader()).await.unwrap();
    let fenced = store.fenced_set_forward(&mut a, &lease, &key, &doc(7, "w"), 7, None).await;
    assert!(matches!(fenced, Err(ElectionError::Fenced)), "{fenced:?}");
}

struct Replica {
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn replica<C: ConnectionLike + Send + 'static>(store: &LeaseStore, conn: C, holder: &str) -> Replica {
    let (tx, role) = watch::channel(Role::Follower);
    let stop = CancellationToken::new();
    let elector =
        Elector { store: store.clone(), conn, holder: holder.to_owned(), highest_epoch_seen: Default::default() };
    let task = tokio::spawn(elector.run(tx, stop.clone()));
    Replica { role, stop, task }
}

fn leaders(replicas: &[Replica]) -> Vec<usize> {
    replicas.iter().enumerate().filter(|(_, r)| matches!(*r.role.borrow(), Role::Leader(_))).map(|(i, _)| i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_and_failover_within_ttl_plus_one_second() {
    let ttl = Duration::from_millis(600);
    let keys = keys();
    let store = LeaseStore::new(&keys, ttl);
    let mut replicas = Vec::new();
    for name in ["lb-0", "lb-1", "lb-2"] {
        replicas.push(replica(&store, conn().await, name).await);
    }
    // One leader emerges, and never two at a time.
    let deadline = Instant::now() + ttl * 2;
    while leaders(&replicas).is_empty() {
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..50 {
        assert_eq!(leaders(&replicas).len(), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = leaders(&replicas)[0];
    let old_lease = replicas[old].role.borrow().lease().cloned().unwrap();

    // Kill the leader (no release: a crash). Another leads within TTL + 1 s.
    replicas[old].task.abort();
    let killed_at = Instant::now();
    let new = loop {
        let now_leading: Vec<usize> = leaders(&replicas).into_iter().filter(|i| *i != old).collect();
        if let Some(i) = now_leading.first() {
            break *i;
        }
        assert!(killed_at.elapsed() < ttl + Duration::from_secs(1), "no failover in TTL + 1 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let new_lease = replicas[new].role.borrow().lease().cloned().unwrap();
    assert!(new_lease.epoch > old_lease.epoch);
    // The dead leader's lease can no longer write.
    let mut c = conn().await;
    assert!(matches!(
        store.fenced_set(&mut c, &old_lease, &keys.assignment(), "x", None).await,
        Err(ElectionError::Fenced)
    ));
    store.fenced_set(&mut c, &new_lease, &keys.assignment(), "y", None).await.unwrap();

    // A graceful stop releases the lease at once.
    replicas[new].stop.cancel();
    let stopped_at = Instant::now();
    loop {
        if leaders(&replicas).iter().any(|i| *i != old && *i != new) {
            break;
        }
        assert!(stopped_at.elapsed() < ttl, "release hands over before the TTL");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in &replicas {
        r.stop.cancel();
    }
}

/// A connection that can be cut, as a network partition from Redis would.
#[derive(Clone)]
struct Cuttable {
    inner: MultiplexedConnection,
    cut: Arc<AtomicBool>,
}

impl ConnectionLike for Cuttable {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if self.cut.load(Ordering::SeqCst) {
            return Box::pin(async { Err(std::io::Error::other("cut").into()) });
        }
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if self.cut.load(Ordering::SeqCst) {
            return Box::pin(async { Err(std::io::Error::other("cut").into()) });
        }
        self.inner.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_redis_steps_down_before_its_lease_expires() {
    let ttl = Duration::from_millis(900);
    let keys = keys();
    let store = LeaseStore::new(&keys, ttl);
    let cut = Arc::new(AtomicBool::new(false));
    let leader = replica(&store, Cuttable { inner: conn().await, cut: cut.clone() }, "lb-cut").await;
    let deadline = Instant::now() + ttl * 2;
    while leader.role.borrow().lease().is_none() {
        assert!(Instant::now() < deadline, "not elected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lease = leader.role.borrow().lease().cloned().unwrap();
    // Cut right after a renewal would have landed: the lease in Redis lives
    // at most one TTL from now.
    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let mut role = leader.role.clone();
    tokio::time::timeout(ttl * 3, role.wait_for(|r| *r == Role::Follower)).await.expect("steps down").unwrap();
    let stepped_down_after = cut_at.elapsed();
    assert!(stepped_down_after < ttl, "stepped down {stepped_down_after:?} after the cut, TTL {ttl:?}");
    // And Redis still shows its lease, or none: nobody else was harmed.
    let current = store.current(&mut conn().await).await.unwrap();
    assert!(current.is_none() || current == Some(lease));
    leader.stop.cancel();
}
