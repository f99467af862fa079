//! The client side of the protocol against a scripted fake load balancer
//! and socket node (no Redis, no Kafka): failover from a dead load
//! balancer, `disconnect` → reconnect after `retry_after_ms` with `last_id`
//! naming the last id, reconnect on close 4000–4499, stop on 4500+,
//! duplicates dropped, one socket per user at a time, a clean close on
//! leave. The protocol is `rtc-client`'s; this checks that the load
//! generator runs its users on it and counts what they saw.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    /// Sockets open per user right now, and the most ever at once.
    open: HashMap<String, u32>,
    max_open: u32,
    /// Connections per user so far.
    sessions: HashMap<String, u32>,
    /// The first frame each reconnect sent (user, session number, frame).
    resumes: Vec<(String, u32, serde_json::Value)>,
    /// Users whose client closed the connection with a close frame.
    client_closes: Vec<String>,
}

/// A load balancer answering every route with the fake node's URL; the
/// token is the user id.
async fn fake_lb(ws_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let user = request.split("user=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?").to_owned();
                let body = serde_json::json!({"user": user, "partition": 0, "node_id": "fake", "url": format!("ws://127.0.0.1:{ws_port}/ws"), "epoch": 1, "token": user}).to_string();
                let response =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

fn text(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

/// A socket node following a script for the first user (`lg-0`) and
/// holding every other user's session until the client closes.
async fn fake_node(seen: Arc<Mutex<Seen>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let (mut user, mut last_id) = (String::new(), None);
                // The signature is tungstenite's (its error type is large).
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| {
                    for pair in req.uri().query().unwrap_or_default().split('&') {
                        match pair.split_once('=') {
                            Some(("token", v)) => user = v.to_owned(),
                            Some(("last_id", v)) => last_id = Some(v.to_owned()),
                            _ => {}
                        }
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                let session = {
                    let mut s = seen.lock().unwrap();
                    let open = s.open.entry(user.clone()).or_default();
                    *open += 1;
                    let open = *open;
                    s.max_open = s.max_open.max(open);
                    let n = s.sessions.entry(user.clone()).or_default();
                    *n += 1;
                    *n
                };
                let welcome = serde_json::json!({"type":"welcome","node_id":"fake","user":user,"partition":0,"epoch":1,"live_from":"0:1"});
                ws.send(text(welcome)).await.unwrap();
                if session > 1 {
                    // A reconnect: the client says what it has in the URL.
                    seen.lock().unwrap().resumes.push((user.clone(), session, serde_json::json!(last_id)));
                }
                let message =
                    |id: &str| text(serde_json::json!({"type":"message","id":id,"from":null,"body":"hello","ts_ms":1}));
                let close =
                    |code: u16| Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: "".into() }));
                if user == "lg-0" {
                    match session {
                        1 => {
                            ws.send(message("0:1")).await.unwrap();
                            ws.send(message("0:2")).await.unwrap();
                            let bye = serde_json::json!({"type":"disconnect","reason":"rebalance","reconnect":true,"retry_after_ms":30});
                            ws.send(text(bye)).await.unwrap();
                            let _ = ws.send(close(4001)).await;
                        }
                        2 => {
                            ws.send(message("0:2")).await.unwrap(); // a redelivery
                            ws.send(message("0:3")).await.unwrap();
                            let _ = ws.send(close(4002)).await;
                        }
                        _ => {
                            let _ = ws.send(close(4500)).await;
                        }
                    }
                }
                // Hold until the client goes (or finishes the close handshake).
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(m, Message::Close(_)) && user != "lg-0" {
                        seen.lock().unwrap().client_closes.push(user.clone());
                    }
                }
                *seen.lock().unwrap().open.get_mut(&user).unwrap() -= 1;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_the_protocol() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ws_port = fake_node(seen.clone()).await;
    let lb_port = fake_lb(ws_port).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lbs = format!("http://127.0.0.1:{dead},http://127.0.0.1:{lb_port}");
    let config = rtc_loadgen::config::Config::try_parse_from([
        "loadgen",
        "--lb",
        &lbs,
        "--rate",
        "0",
        "--profile",
        "plateau:3s:2",
        "--drain-secs",
        "0",
        "--progress-secs",
        "0",
    ])
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), rtc_loadgen::run(config, CancellationToken::new()))
        .await
        .expect("the run ends")
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    let seen = seen.lock().unwrap();
    assert_eq!(seen.max_open, 1, "a user never holds two sockets");
    assert_eq!(report.double_sessions, 0);
    assert_eq!(seen.sessions["lg-0"], 3);
    // Both reconnects resumed after the highest id seen.
    let resumes: Vec<_> =
        seen.resumes.iter().filter(|(u, _, _)| u == "lg-0").map(|(_, n, f)| (*n, f.clone())).collect();
    assert_eq!(resumes, vec![(2, serde_json::json!("0:2")), (3, serde_json::json!("0:3")),]);
    assert_eq!(report.reconnects, 2);
    assert_eq!(report.reconnects_by_reason.get("rebalance"), Some(&1));
    assert_eq!(report.reconnects_by_reason.get("close_4002"), Some(&1));
    assert_eq!(report.stopped_by_server.get("close_4500"), Some(&1));
    assert_eq!(report.messages.duplicates, 0, "0:2 came twice; the client delivered it once");
    assert_eq!(report.messages.foreign_messages, 3, "0:1, 0:2, 0:3 are not this run's");
    assert!(report.route_failovers >= 1, "users starting on the dead load balancer moved");
    assert_eq!(report.route_errors.get("unreachable").copied(), Some(report.route_failovers));
    // lg-0 stopped and was replaced; the other users left cleanly.
    assert_eq!(report.messages.users_ended, 1);
    assert_eq!(report.messages.users_joined, 3);
    assert_eq!(report.messages.users_left, 2);
    let mut closes = seen.client_closes.clone();
    closes.sort();
    assert_eq!(closes, vec!["lg-1", "lg-2"]);
    assert!(seen.open.values().all(|n| *n == 0));
    assert_eq!(report.peak_users, 2);
}
