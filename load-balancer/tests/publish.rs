//! Assignment publication through the fenced write, on a real Redis.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use rtc_core::{Keys, NodeState};
use rtc_load_balancer::assign::{Balance, LiveNode};
use rtc_load_balancer::election::{ElectionError, ForwardWrite, LeaseStore};
use rtc_load_balancer::publish::{load, next_assignment, publish};

#[tokio::test]
async fn only_the_lease_holder_publishes_and_followers_load_it() {
    let url = std::env::var("RTC_TEST_REDIS_URL").expect("run through scripts/test");
    let client = redis::Client::open(url).unwrap();
    let keys = Keys::new(format!("pub{}:", std::process::id()));
    let store = LeaseStore::new(&keys, Duration::from_secs(10));
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys.assignment_events()).await.unwrap();

    let leader = store.try_acquire(&mut conn, "lb-a", 1).await.unwrap().unwrap();
    let live: Vec<LiveNode> =
        (0..3).map(|i| LiveNode::new(format!("socket-{i}"), format!("ws://n{i}/ws"), NodeState::Ready)).collect();
    let (a1, _) = next_assignment(None, &live, 12, &[], Balance::Count, leader.epoch, 0).unwrap();
    assert_eq!(publish(&store, &mut conn, &leader, &keys, &a1).await.unwrap(), ForwardWrite::Written);
    let announced: String = pubsub.on_message().next().await.unwrap().get_payload().unwrap();
    assert_eq!(announced, "1");
    assert_eq!(load(&mut conn, &keys).await.unwrap(), Some(a1.clone()));

    // A new leader continues the epochs; the old one is fenced off.
    let _: () = conn.del(keys.leader()).await.unwrap();
    let next_leader = store.try_acquire(&mut conn, "lb-b", 1).await.unwrap().unwrap();
    let current = load(&mut conn, &keys).await.unwrap();
    let (a2, _) = next_assignment(current.as_ref(), &live[..2], 12, &[], Balance::Count, next_leader.epoch, 1).unwrap();
    assert_eq!((a2.epoch, a2.leader_epoch), (2, next_leader.epoch));
    let (stale, _) = next_assignment(Some(&a1), &live[1..], 12, &[], Balance::Count, leader.epoch, 1).unwrap();
    assert!(matches!(publish(&store, &mut conn, &leader, &keys, &stale).await, Err(ElectionError::Fenced)));
    assert_eq!(publish(&store, &mut conn, &next_leader, &keys, &a2).await.unwrap(), ForwardWrite::Written);
    assert_eq!(load(&mut conn, &keys).await.unwrap(), Some(a2));

    // Garbage in Redis is reported, not served.
    let _: () = conn.set(keys.assignment(), "{\"v\":1}").await.unwrap();
    assert!(load(&mut conn, &keys).await.is_err());
}
