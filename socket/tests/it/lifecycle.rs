//! The binary's lifecycle, and keepalive: SIGTERM drains then exits 0; a
//! silent client is closed as idle.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

/// The `socket` binary as a child process, once its log says it is ready,
/// with its WebSocket URL.
async fn spawn_binary(world: &World, node_id: &str, extra: &[&str]) -> (tokio::process::Child, String) {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = world.args(node_id, extra);
    args.extend([
        "--listen".into(),
        format!("127.0.0.1:{ws_port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
    ]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_socket"))
        .args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its structured log says when it is ready.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
            if v["fields"]["message"] == "socket node ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true));
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("ws://127.0.0.1:{ws_port}/ws"))
}

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

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_sessions_then_exits_zero() {
    let mut world = World::new(4).await;
    let (mut child, url) =
        spawn_binary(&world, "socket-bin", &["--drain-window-ms", "300", "--shutdown-deadline-ms", "5000"]).await;
    world.publish_nodes(1, vec![("socket-bin".into(), url.clone())], |_| 0).await;
    let mut client = join(&url, "u1", "socket-bin").await;

    sigterm(&child);
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
    sigterm(&child);
    let started = std::time::Instant::now();
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
    eventually("the idle session is gone", Duration::from_secs(2), async || node.shared.hub.connections() == 0).await;
    assert_eq!(metric(&node, "rtc_socket_disconnects_total{reason=\"idle\"}").await, 1.0);

    // A client that reads (and so answers pings) stays.
    let mut lively = Client::join(&node, &world.token("u2", &node, 1)).await;
    assert_eq!(lively.next_json_within(Duration::from_millis(600)).await, None);
    assert_eq!(node.shared.hub.connections(), 1);
    node.shutdown().await;
}
