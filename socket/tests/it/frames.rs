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
async fn a_client_that_stops_reading_is_closed_as_slow_in_bounded_time() {
    // On tansu: the mock cluster keeps only 5 MiB per partition, less than
    // this test writes.
    let mut world = World::tansu(4).await;
    let node = world.serving_node("socket-a", &["--session-queue", "4", "--write-timeout-ms", "1000"]).await;
    let mut slow = Client::join(&node, &world.token("erin", &node, 1)).await;
    let producer = world.producer().await;
    let (p, o) = world.produce(&producer, "erin", "first").await;
    assert_eq!(slow.next_json().await.unwrap()["body"], "first");
    let mut last_read = Some(format!("{p}:{o}"));
    // Erin stops reading. Up to 1000 × 16 KiB is far more than loopback
    // socket buffers hold.
    let body = "x".repeat(16 * 1024);
    let mut ids = vec![format!("{p}:{o}")];
    let mut produced = 0;
    for _ in 0..1000 {
        let (p, o) = world.produce(&producer, "erin", &body).await;
        ids.push(format!("{p}:{o}"));
        produced += 1;
        if metric(&node, "rtc_socket_disconnects_total{reason=\"slow\"}").await > 0.0 {
            break;
        }
    }
    // Closed within the write deadline of the first write that stalled.
    eventually("erin is closed as slow", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_disconnects_total{reason=\"slow\"}").await == 1.0
    })
    .await;
    assert_eq!(metric(&node, "rtc_socket_slow_consumer_drops_total").await, 1.0);
    // Reading now: what the kernel buffered, then the end of the session.
    let mut messages = 0;
    while let Some(frame) = slow.next_json().await {
        if frame["type"] == "disconnect" {
            assert_eq!(frame["reason"], "slow");
            break;
        }
        last_read = Some(frame["id"].as_str().unwrap().to_owned());
        messages += 1;
    }
    assert!(messages < produced, "the queue was bounded: {messages} of {produced}");
    // Resuming from the last message it read, erin gets every later one,
    // in order, from the log (the cache holds a few per user at most).
    let consumed = async || metric(&node, "rtc_socket_messages_consumed_total").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumed().await < f64::from(produced) {
        assert!(tokio::time::Instant::now() < deadline, "consumed {} of {produced}", consumed().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_read = last_read.expect("erin read the first message");
    let (_back, replayed, resumed) = Client::resume(&node, &world.token("erin", &node, 1), &last_read).await;
    let after: Vec<&String> = ids.iter().skip_while(|id| **id != last_read).skip(1).collect();
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let got: Vec<&str> = replayed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got.len(), after.len(), "{resumed}");
    assert_eq!(got, after, "everything after {last_read}, in order");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_rate_are_refused_and_counted() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--send-rate", "10"]).await;
    let mut alice = Client::join(&node, &world.token("alice", &node, 1)).await;
    for i in 0..40 {
        alice.send_json(json!({"type":"send","to":"bob","body":"hi","client_msg_id":format!("c-{i}")})).await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 40 {
        let frame = alice.next_json().await.expect("an answer to every send");
        match (frame["type"].as_str(), frame["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(frame["client_msg_id"].as_str().is_some_and(|c| c.starts_with("c-")), "{frame}");
                limited += 1;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    // A burst of 10, and perhaps one or two more refilled meanwhile.
    assert!((10..=13).contains(&acks), "{acks} acked");
    assert_eq!(metric(&node, "rtc_socket_invalid_frames_total{reason=\"rate_limited\"}").await, f64::from(limited));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_to_random_users_stay_within_the_memory_budget() {
    const BUDGET: usize = 1024 * 1024;
    let mut world = World::new(4).await;
    let budget = BUDGET.to_string();
    let flags = ["--memory-budget-bytes", &budget, "--send-rate", "10000", "--send-bytes-rate", "100000000"];
    let node = world.serving_node("socket-a", &flags).await;
    // Some recipients are online and read nothing: their queues fill too.
    let mut idle = Vec::new();
    for i in 0..5 {
        idle.push(Client::join(&node, &world.token(&format!("u-{i}"), &node, 1)).await);
    }
    let mut alice = Client::join(&node, &world.token("alice", &node, 1)).await;
    let body = "x".repeat(32 * 1024);
    let mut peak = 0;
    for i in 0..150 {
        let to = format!("u-{}", (i * 7919) % 50);
        alice.send_json(json!({"type":"send","to":to,"body":body})).await;
        assert_eq!(alice.next_json().await.unwrap()["type"], "ack");
        peak = peak.max(node.hub.held_bytes());
    }
    eventually("every message consumed", Duration::from_secs(10), async || {
        metric(&node, "rtc_socket_messages_consumed_total").await >= 150.0
    })
    .await;
    peak = peak.max(node.hub.held_bytes());
    // 150 × 32 KiB is 4.7 MiB: the node held at most its budget.
    assert!(peak <= BUDGET, "held {peak} bytes");
    assert!(metric(&node, "rtc_socket_budget_evictions_total{what=\"cache\"}").await > 0.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_any_idle_buffer_arrive_intact_both_ways_and_limits_hold() {
    // An idle session holds no read buffer (see `rtc_socket::upgrade`): a
    // frame is read in small pieces, through one read of the socket. Sent
    // back to back, several frames share a read; two-byte characters
    // straddle the pieces.
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--max-frame-bytes", "65536"]).await;
    let mut lena = Client::join(&node, &world.token("lena", &node, 1)).await;
    let sizes = [1, 13, 14, 15, 2_000, 8_191, 8_193, 30_001, 60_000];
    let bodies: Vec<String> = sizes.iter().enumerate().map(|(i, n)| format!("{i}:{}", "é".repeat(n / 2))).collect();
    for (i, body) in bodies.iter().enumerate() {
        let frame = json!({"type":"send","to":"lena","body":body,"client_msg_id":format!("c-{i}")});
        lena.ws.feed(tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into())).await.unwrap();
    }
    lena.ws.flush().await.unwrap();
    let (mut acked, mut received) = (0, Vec::new());
    while acked < bodies.len() || received.len() < bodies.len() {
        let frame = lena.next_json_within(Duration::from_secs(10)).await.expect("acks and messages");
        match frame["type"].as_str() {
            Some("ack") => acked += 1,
            Some("message") => received.push(frame["body"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {frame}"),
        }
    }
    received.sort_by_key(|b| b.split(':').next().unwrap().parse::<usize>().unwrap());
    assert_eq!(received, bodies, "every body, byte for byte, out and back");

    // The limit holds at the largest size: just over it is refused...
    let over = json!({"type":"send","to":"lena","body":"y".repeat(65_536)}).to_string();
    lena.send_text(over).await;
    assert_eq!(lena.next_json().await.expect("the session stays open")["code"], "too_large");
    // ... and far over it ends the connection, counted.
    lena.send_text("z".repeat(200 * 1024)).await;
    assert_eq!(lena.next_json_within(Duration::from_secs(2)).await, None);
    assert_eq!(metric(&node, "rtc_socket_invalid_frames_total{reason=\"too_large\"}").await, 2.0);
    node.shutdown().await;
}
