//! Heartbeat ingestion from a real Redis stream.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use rtc_core::redis_io::HeartbeatCursor;
use rtc_core::{Document, Heartbeat, Keys, NodeState};
use rtc_load_balancer::fleet::Fleet;
use rtc_load_balancer::ingest::{Ingest, IngestClock, IngestObserver, Membership};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counts(Mutex<BTreeMap<&'static str, u32>>);

impl IngestObserver for Counts {
    fn invalid(&self, reason: &'static str) {
        *self.0.lock().unwrap().entry(reason).or_default() += 1;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn hb(node: &str, seq: u64, state: NodeState) -> Heartbeat {
    Heartbeat {
        v: 1,
        node_id: node.into(),
        url: format!("ws://{node}/ws"),
        state,
        seq,
        sent_at_ms: now_ms(),
        assignment_epoch: 0,
        connections: 1,
        capacity: 10,
        cpu: 0.5,
        memory: 0.5,
        mps_in: 0.0,
        mps_out: 0.0,
        p95_latency_ms: 0.0,
        kafka_lag: 0,
        partition_connections: Some(BTreeMap::from([(3, 1)])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_validates_counts_and_follows_membership() {
    static N: AtomicU32 = AtomicU32::new(0);
    let keys = Keys::new(format!("in{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let url = std::env::var("RTC_TEST_REDIS_URL").expect("run through scripts/test");
    let client = redis::Client::open(url).unwrap();
    let mut writer = client.get_multiplexed_async_connection().await.unwrap();
    let add = async |writer: &mut redis::aio::MultiplexedConnection, value: String| {
        let id: String = writer.xadd(keys.heartbeats(), "*", &[("hb", value)]).await.unwrap();
        id
    };

    let fleet = Arc::new(Mutex::new(Fleet::new(1000, 30_000)));
    let counts = Arc::new(Counts::default());
    let clock = Arc::new(IngestClock::default());
    let ingest = Ingest {
        conn: client.get_multiplexed_async_connection().await.unwrap(),
        cursor: HeartbeatCursor::since(keys.heartbeats(), now_ms() - 3000, 500, Duration::from_millis(50)),
        fleet: fleet.clone(),
        partitions: 8,
        observer: counts.clone(),
        clock: clock.clone(),
    };
    let (tx, mut membership) = watch::channel(Membership::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(ingest.run(tx, stop.clone()));

    add(&mut writer, hb("socket-0", 1, NodeState::Starting).to_json()).await;
    add(&mut writer, "{not json".into()).await;
    add(&mut writer, r#"{"v":1,"node_id":"socket-9"}"#.into()).await;
    let mut bad_partition = hb("socket-8", 1, NodeState::Ready);
    bad_partition.partition_connections = Some(BTreeMap::from([(99, 1)]));
    add(&mut writer, bad_partition.to_json()).await;
    add(&mut writer, hb("socket-0", 1, NodeState::Starting).to_json()).await; // replayed
    let _: String = writer.xadd(keys.heartbeats(), "*", &[("other", "x")]).await.unwrap();

    let wait = |m: &Membership| m.get("socket-0") == Some(&NodeState::Starting);
    tokio::time::timeout(Duration::from_secs(5), membership.wait_for(wait)).await.unwrap().unwrap();
    // Joining, then becoming ready, are both membership changes.
    add(&mut writer, hb("socket-0", 2, NodeState::Ready).to_json()).await;
    let wait = |m: &Membership| m.get("socket-0") == Some(&NodeState::Ready);
    tokio::time::timeout(Duration::from_secs(5), membership.wait_for(wait)).await.unwrap().unwrap();

    // A burst is taken whole.
    let mut last_id = String::new();
    for seq in 3..2003 {
        last_id = add(&mut writer, hb("socket-1", seq, NodeState::Ready).to_json()).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let latest = fleet.lock().unwrap().record("socket-1").map(|r| r.latest().seq);
        if latest == Some(2002) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "burst not ingested: {latest:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Received when Redis added it, on Redis's clock; so is "now".
    let seen = fleet.lock().unwrap().record("socket-1").unwrap().last_seen_ms();
    assert_eq!(seen, rtc_core::redis_io::entry_ms(&last_id));
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut writer).await.unwrap();
    let now = clock.now_ms().unwrap();
    assert!(now >= seen && now / 1000 <= secs, "clock {now} vs entry {seen} and TIME {secs}s");
    assert!(clock.healthy_for_ms() > 0);
    let counts = counts.0.lock().unwrap().clone();
    assert_eq!(
        counts,
        BTreeMap::from([("json", 1), ("missing_field", 2), ("partition", 1), ("stale", 1)]),
        "invalid entries by reason"
    );
    assert_eq!(membership.borrow().len(), 2);
    stop.cancel();
    task.await.unwrap();
}
