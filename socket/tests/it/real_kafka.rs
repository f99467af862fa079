//! The same node against a real Kafka-protocol broker (tansu, started by
//! `scripts/test`): topic check, delivery, send, and hand-off commits.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_partition_count_is_refused() {
    let world = World::tansu(6).await;
    let err = world.test_node("socket-a", &[]).partitions(12).start().await.err().expect("refuses to start");
    let message = err.to_string();
    assert!(message.contains("has 6 partitions") && message.contains("12"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_send_and_handoff_commits_on_a_real_broker() {
    const P: u32 = 12;
    let mut world = World::tansu(P).await;
    let a = world.node("socket-a", &[]).await;
    let b = world.node("socket-b", &[]).await;
    world.publish(1, &[&a, &b], |_| 0).await;
    wait_serving(&a, 1).await;

    let mut alice = Client::join(&a, &world.token("alice", &a, 1)).await;
    let mut bob = Client::join(&a, &world.token("bob", &a, 1)).await;
    // A client's send is produced to the recipient's partition (Java's
    // partitioner) and reaches the recipient.
    alice.send_json(json!({"type":"send","to":"bob","body":"hi","client_msg_id":"c-1"})).await;
    let ack = alice.next_json().await.unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    let bob_p = rtc_core::partition_for_key(b"bob", P);
    assert!(ack["id"].as_str().unwrap().starts_with(&format!("{bob_p}:")), "{ack}");
    let m = bob.next_json().await.unwrap();
    assert_eq!((m["from"].as_str(), m["body"].as_str()), (Some("alice"), Some("hi")));

    // Move bob's partition to B: A commits what it delivered.
    let producer = world.producer().await;
    let (_, o1) = world.produce(&producer, "bob", "before").await;
    assert_eq!(bob.next_json().await.unwrap()["body"], "before");
    world.publish(2, &[&a, &b], |p| usize::from(p == bob_p)).await;
    let d = bob.next_json().await.unwrap();
    assert_eq!((d["type"].as_str(), d["reason"].as_str()), (Some("disconnect"), Some("rebalance")));
    eventually("A acknowledges epoch 2", Duration::from_secs(5), async || a.ownership.acked_epoch() == 2).await;

    // Once bob is gone A stops fetching the partition and commits.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &world.brokers).set("group.id", "rtc-socket").create().unwrap();
    let group_offset = || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&world.topic, bob_p as i32);
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        committed.elements()[0].offset()
    };
    eventually("A commits past what it delivered", Duration::from_secs(10), async || {
        group_offset() == rdkafka::Offset::Offset(o1 + 1)
    })
    .await;

    let (_, o2) = world.produce(&producer, "bob", "after").await;
    let (mut bob, replayed, resumed) = Client::resume(&b, &world.token("bob", &b, 2), &format!("{bob_p}:{o1}")).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    // Replayed from the log if B had consumed it already, else live.
    let m = match replayed.into_iter().next() {
        Some(m) => m,
        None => bob.next_json().await.unwrap(),
    };
    assert_eq!((m["id"].as_str().unwrap(), m["body"].as_str().unwrap()), (format!("{bob_p}:{o2}").as_str(), "after"));
    a.shutdown().await;
    b.shutdown().await;
}
