//! The binary's lifecycle, and keepalive: SIGTERM drains then exits 0; a
//! silent client is closed as idle; a critical task that ends fails the
//! node.

use std::time::Duration;

use crate::support::*;

/// A client of `node_id` at `url`, admitted once the assignment is applied.
async fn join(url: &str, user: &str, node_id: &str) -> Client {
    let token = token_for(user, node_id, rtc_core::partition_for_key(user.as_bytes(), 4), 1);
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await {
            let mut client = Client { ws };
            assert_eq!(client.next_json().await.unwrap()["type"], "welcome");
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} was never admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_sessions_then_exits_zero() {
    let mut world = World::new(4).await;
    let (mut child, url) =
        spawn_binary(&world, "socket-bin", &["--drain-window-ms", "300", "--shutdown-deadline-ms", "5000"]).await;
    world.publish_nodes(1, vec![("socket-bin".into(), url.clone())], |_| 0).await;
    let mut client = join(&url, "u1", "socket-bin").await;

    signal(&child, "TERM");
    let frame = client.next_json().await.expect("disconnect before exit");
    assert_eq!((frame["type"].as_str(), frame["reason"].as_str()), (Some("disconnect"), Some("drain")));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits in time").unwrap();
    assert_eq!(status.code(), Some(0));
}

/// With its Kafka gone, the node still stops within its deadline plus the
/// slack `main` allows (1 s + 10 s here), whatever the Kafka client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_kafka_gone_still_exits_in_time() {
    let mut world = World::new(4).await;
    let (mut child, url) =
        spawn_binary(&world, "socket-bin", &["--drain-window-ms", "300", "--shutdown-deadline-ms", "1000"]).await;
    world.publish_nodes(1, vec![("socket-bin".into(), url.clone())], |_| 0).await;
    let _client = join(&url, "u1", "socket-bin").await;

    world.stop_kafka();
    signal(&child, "TERM");
    let started = tokio::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let took = started.elapsed();
    assert!(status.is_ok(), "still running {took:?} after SIGTERM with Kafka gone");
    assert!(took < Duration::from_secs(13), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_is_closed_as_idle() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--ping-interval-ms", "50", "--idle-timeout-ms", "200"]).await;
    let mut quiet = Client::join(&node, &world.token("u1", &node, 1)).await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let frame = quiet.next_json().await.expect("disconnect frame");
    assert_eq!((frame["type"].as_str(), frame["reason"].as_str()), (Some("disconnect"), Some("idle")));
    eventually("the idle session is gone", Duration::from_secs(2), async || node.hub.connections() == 0).await;
    assert_eq!(metric(&node, "rtc_socket_disconnects_total{reason=\"idle\"}").await, 1.0);

    // A client that reads (and so answers pings) stays.
    let mut lively = Client::join(&node, &world.token("u2", &node, 1)).await;
    assert_eq!(lively.next_json_within(Duration::from_millis(600)).await, None);
    assert_eq!(node.hub.connections(), 1);
    node.shutdown().await;
}

/// A critical task that ends early is reported (the binary exits non-zero
/// on it) and turns `/livez` to 503, instead of a node that looks alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_task_that_ends_fails_the_node() {
    let world = World::new(4).await;
    let node = world.node("socket-sup", &[]).await;
    assert_eq!(admin_get(&node, "/livez").await, (200, "ok".to_owned()));
    assert!(node.abort_task_for_test("hand-off"));
    let failure = tokio::time::timeout(Duration::from_secs(5), node.failed()).await.expect("reported");
    assert_eq!(failure.to_string(), "critical task `hand-off` was cancelled");
    assert_eq!(admin_get(&node, "/livez").await, (503, failure.to_string()));
    node.shutdown().await;
}
