//! Bad input from clients: an error frame and a counted metric, never a
//! panic, and the session (and node) keep working.

use std::time::Duration;

use futures_util::SinkExt;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_oversized_frames_are_refused_and_counted() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--max-frame-bytes", "1024"]).await;
    let mut client = Client::join(&node, &world.token("dave", &node, 1)).await;

    let cases = [
        ("{not json".to_owned(), "bad_frame"),
        (json!({"type":"dance"}).to_string(), "unknown_type"),
        (json!({"type":"send","to":"x"}).to_string(), "bad_frame"),
        (json!({"type":"send","to":"bad\nid","body":"b"}).to_string(), "bad_frame"),
        (json!({"type":"resume","last_id":"nope"}).to_string(), "bad_frame"),
        (json!({"type":"send","to":"x","body":"y".repeat(1500)}).to_string(), "too_large"),
    ];
    for (text, code) in &cases {
        client.send_text(text.clone()).await;
        let reply = client.next_json().await.expect("the session stays open");
        assert_eq!((reply["type"].as_str().unwrap(), reply["code"].as_str().unwrap()), ("error", *code), "{text}");
    }
    client.ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(client.next_json().await.unwrap()["code"], "bad_frame");
    assert_eq!(metric(&node, "rtc_socket_invalid_frames_total{reason=\"bad_frame\"}").await, 5.0);
    assert_eq!(metric(&node, "rtc_socket_invalid_frames_total{reason=\"unknown_type\"}").await, 1.0);
    assert_eq!(metric(&node, "rtc_socket_invalid_frames_total{reason=\"too_large\"}").await, 1.0);

    // Far over the limit: the connection ends, the node does not.
    client.send_text("z".repeat(64 * 1024)).await;
    assert_eq!(client.next_json_within(Duration::from_secs(2)).await, None);
    let mut again = Client::join(&node, &world.token("dave", &node, 1)).await;
    again.send_json(json!({"type":"resume"})).await;
    assert_eq!(again.next_json_within(Duration::from_millis(200)).await, None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_its_queue_stays_bounded() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--session-queue", "4"]).await;
    let mut slow = Client::join(&node, &world.token("erin", &node, 1)).await;
    let producer = world.producer().await;
    // Up to 1000 × 16 KiB is far more than loopback socket buffers hold
    // while the client reads nothing. (Larger records stalled librdkafka's
    // mock cluster after a few MiB of backlog; tansu and Kafka do not care.)
    let body = "x".repeat(16 * 1024);
    let mut last = (0, 0);
    let mut produced = 0;
    for _ in 0..1000 {
        last = world.produce(&producer, "erin", &body).await;
        produced += 1;
        if metric(&node, "rtc_socket_slow_consumer_drops_total").await > 0.0 {
            break;
        }
    }
    eventually("erin is marked slow", Duration::from_secs(10), async || {
        metric(&node, "rtc_socket_slow_consumer_drops_total").await == 1.0
    })
    .await;
    // Reading now: some messages, then the slow disconnect.
    let mut messages = 0;
    let disconnect = loop {
        let frame = slow.next_json().await.expect("disconnect frame before close");
        if frame["type"] == "disconnect" {
            break frame;
        }
        messages += 1;
    };
    assert_eq!(disconnect["reason"], "slow");
    assert_eq!(disconnect["reconnect"], true);
    assert!(messages < produced, "the queue was bounded: {messages} of {produced}");
    eventually("the slow session is closed", Duration::from_secs(3), async || {
        metric(&node, "rtc_socket_disconnects_total{reason=\"slow\"}").await == 1.0
    })
    .await;
    // The newest message waits in the resume buffer (once the node has
    // consumed the backlog, which would otherwise flood the new session).
    let consumed = async || metric(&node, "rtc_socket_messages_consumed_total").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumed().await < f64::from(produced) {
        assert!(tokio::time::Instant::now() < deadline, "consumed {} of {produced}", consumed().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut back = Client::join(&node, &world.token("erin", &node, 1)).await;
    back.send_json(json!({"type":"resume","last_id": format!("{}:{}", last.0, last.1 - 1)})).await;
    assert_eq!(back.next_json().await.unwrap()["id"], json!(format!("{}:{}", last.0, last.1)));
    node.shutdown().await;
}
