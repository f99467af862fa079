//! The binary's lifecycle, and keepalive: SIGTERM drains then exits 0; a
//! silent client is closed as idle.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_sessions_then_exits_zero() {
    let mut world = World::new(4).await;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = world.args("socket-bin", &["--drain-window-ms", "300", "--shutdown-deadline-ms", "5000"]);
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
    let url = format!("ws://127.0.0.1:{ws_port}/ws");
    world.publish_nodes(1, vec![("socket-bin".into(), url)], |_| 0).await;
    let token = token_for("u1", "socket-bin", rtc_core::partition_for_key(b"u1", 4), 1);
    let mut client = None;
    for _ in 0..100 {
        let attempt = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{ws_port}/ws?token={token}")).await;
        if let Ok((ws, _)) = attempt {
            client = Some(Client { ws });
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("admitted once the assignment is applied");
    assert_eq!(client.next_json().await.unwrap()["type"], "welcome");

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let frame = client.next_json().await.expect("disconnect before exit");
    assert_eq!((frame["type"].as_str(), frame["reason"].as_str()), (Some("disconnect"), Some("drain")));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits in time").unwrap();
    assert_eq!(status.code(), Some(0));
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
