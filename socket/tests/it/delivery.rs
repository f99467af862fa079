//! Kafka → the right session, once, with a stable id; client sends are
//! produced to the recipient's partition and acknowledged.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_reaches_every_session_of_its_user_once() {
    let mut world = World::new(8).await;
    let node = world.serving_node("socket-a", &[]).await;
    let mut a1 = Client::join(&node, &world.token("alice", &node, 1)).await;
    let mut a2 = Client::join(&node, &world.token("alice", &node, 1)).await;
    let mut bob = Client::join(&node, &world.token("bob", &node, 1)).await;

    let producer = world.producer().await;
    let (partition, offset) = world.produce(&producer, "alice", "{\"text\":\"hi\"}").await;
    assert_eq!(partition as u32, rtc_core::partition_for_key(b"alice", 8), "Java partitioner");
    for client in [&mut a1, &mut a2] {
        let m = client.next_json().await.unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["id"], json!(format!("{partition}:{offset}")));
        assert_eq!(m["body"], "{\"text\":\"hi\"}");
        assert!(m["ts_ms"].as_i64().unwrap() > 0);
    }
    // Bob gets nothing, and alice nothing twice.
    assert_eq!(bob.next_json_within(Duration::from_millis(300)).await, None);
    assert_eq!(a1.next_json_within(Duration::from_millis(300)).await, None);
    assert_eq!(metric(&node, "rtc_socket_messages_delivered_total").await, 2.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_produced_to_the_recipient_and_acknowledged() {
    let mut world = World::new(8).await;
    let node = world.serving_node("socket-a", &[]).await;
    let mut alice = Client::join(&node, &world.token("alice", &node, 1)).await;
    let mut bob = Client::join(&node, &world.token("bob", &node, 1)).await;

    alice.send_json(json!({"type":"send","to":"bob","body":"hello bob","client_msg_id":"c-1"})).await;
    let ack = alice.next_json().await.unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_msg_id"], "c-1");
    let id = ack["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with(&format!("{}:", rtc_core::partition_for_key(b"bob", 8))), "{id}");
    let m = bob.next_json().await.unwrap();
    assert_eq!(
        (m["id"].as_str().unwrap(), m["from"].as_str().unwrap(), m["body"].as_str().unwrap()),
        (id.as_str(), "alice", "hello bob")
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_what_was_missed_and_dedupes() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &[]).await;
    let producer = world.producer().await;
    let mut first = Client::join(&node, &world.token("carol", &node, 1)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        world.produce(&producer, "carol", &format!("m{i}")).await;
        ids.push(first.next_json().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    drop(first);
    // Two more arrive while carol is away.
    for i in 3..5 {
        let (p, o) = world.produce(&producer, "carol", &format!("m{i}")).await;
        ids.push(format!("{p}:{o}"));
    }
    eventually("carol's session is gone", Duration::from_secs(5), async || node.shared.hub.connections() == 0).await;
    let mut again = Client::join(&node, &world.token("carol", &node, 1)).await;
    again.send_json(json!({"type":"resume","last_id": ids[2]})).await;
    assert_eq!(again.next_json().await.unwrap()["id"], json!(ids[3]));
    assert_eq!(again.next_json().await.unwrap()["id"], json!(ids[4]));
    // Resuming again from an older id replays what the client says it
    // missed, but nothing this session already wrote.
    again.send_json(json!({"type":"resume","last_id": ids[0]})).await;
    assert_eq!(again.next_json().await.unwrap()["id"], json!(ids[1]));
    assert_eq!(again.next_json().await.unwrap()["id"], json!(ids[2]));
    assert_eq!(again.next_json_within(Duration::from_millis(300)).await, None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_older_messages_even_after_a_newer_live_one() {
    // The race behind a hand-off: the new owner buffered m1 before the user
    // arrived, then m2 went live to the session before its `resume` was read.
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &[]).await;
    let producer = world.producer().await;
    let mut first = Client::join(&node, &world.token("frank", &node, 1)).await;
    let (p, o0) = world.produce(&producer, "frank", "m0").await;
    assert_eq!(first.next_json().await.unwrap()["body"], "m0");
    drop(first);
    eventually("frank's session is gone", Duration::from_secs(5), async || node.shared.hub.connections() == 0).await;
    let (_, o1) = world.produce(&producer, "frank", "m1").await;
    eventually("m1 is buffered", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_messages_consumed_total").await == 2.0
    })
    .await;

    let mut again = Client::join(&node, &world.token("frank", &node, 1)).await;
    world.produce(&producer, "frank", "m2").await;
    assert_eq!(again.next_json().await.unwrap()["body"], "m2", "live first");
    again.send_json(json!({"type":"resume","last_id": format!("{p}:{o0}")})).await;
    let replayed = again.next_json().await.expect("m1 replayed");
    assert_eq!(
        (replayed["id"].as_str().unwrap(), replayed["body"].as_str().unwrap()),
        (format!("{p}:{o1}").as_str(), "m1")
    );
    // m2 is not sent twice.
    assert_eq!(again.next_json_within(Duration::from_millis(300)).await, None);
    node.shutdown().await;
}
