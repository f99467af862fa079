//! Shared by the service tests: load balancers on a real Redis with their
//! own key prefix, fake socket nodes writing heartbeats straight to the
//! stream, and small HTTP helpers.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use rtc_core::{Document, Heartbeat, NodeState};
use rtc_load_balancer::service::LbHandle;
use rtc_load_balancer::testing::TestLb;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const P: u32 = 12;

/// Connections each fake node reports (0 when not set).
pub type Load = Arc<Mutex<BTreeMap<String, u64>>>;

pub fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("rt{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL").expect("run through scripts/test")
}

pub async fn lb(prefix: &str, id: &str, extra: &[&str]) -> LbHandle {
    lb_on(&redis_url(), prefix, id, extra).await
}

/// A load balancer on the Redis at `url`.
pub async fn lb_on(url: &str, prefix: &str, id: &str, extra: &[&str]) -> LbHandle {
    TestLb::new(url, prefix, id).partitions(P).args(extra).start().await.expect("starts")
}

/// Fake socket nodes: a heartbeat every 100 ms each until stopped.
pub fn beat(prefix: &str, nodes: &[&str], stop: CancellationToken) {
    beat_with(prefix, nodes, stop, Load::default());
}

/// Fake socket nodes reporting the connections in `load`.
pub fn beat_with(prefix: &str, nodes: &[&str], stop: CancellationToken, load: Load) {
    FakeNodes { url: redis_url(), prefix: prefix.to_owned(), load, ..FakeNodes::default() }.start(nodes, stop);
}

/// Fake socket nodes writing heartbeats to the stream every 100 ms: ready,
/// with the connections in `load` and the assignment epoch in
/// `applied_epoch`. Write errors (Redis down) are skipped, as a node would.
#[derive(Default)]
pub struct FakeNodes {
    pub url: String,
    pub prefix: String,
    pub load: Load,
    pub applied_epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl FakeNodes {
    pub fn start(self, nodes: &[&str], stop: CancellationToken) {
        let key = rtc_core::Keys::new(&self.prefix).heartbeats();
        let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        tokio::spawn(async move {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut conn = rtc_core::redis_io::connection_manager(&client, Duration::from_secs(1)).unwrap();
            for seq in 1.. {
                self.beat_once(&mut conn, &key, &nodes, seq).await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
    }

    async fn beat_once(&self, conn: &mut redis::aio::ConnectionManager, key: &str, nodes: &[String], seq: u64) {
        for node in nodes {
            let hb = Heartbeat {
                v: 1,
                node_id: node.clone(),
                url: format!("ws://{node}:8080/ws"),
                state: NodeState::Ready,
                seq,
                sent_at_ms: 0,
                assignment_epoch: self.applied_epoch.load(Ordering::Relaxed),
                connections: self.load.lock().unwrap().get(node).copied().unwrap_or(0),
                capacity: 100,
                cpu: 0.1,
                memory: 0.1,
                mps_in: 0.0,
                mps_out: 0.0,
                p95_latency_ms: 0.0,
                kafka_lag: 0,
                partition_connections: None,
            };
            let _: Result<String, _> = conn.xadd(key, "*", &[("hb", hb.to_json())]).await;
        }
    }
}

/// One HTTP/1.1 exchange: status, headers (names lowercased) and body.
pub async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, BTreeMap<String, String>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let fields = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, fields, body.to_owned())
}

pub async fn get_text(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = exchange(addr, "GET", path, headers).await;
    (status, body)
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = get_text(addr, path, headers).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn routes(lb: &LbHandle, users: &[String]) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for u in users {
        let (status, body) = get(lb.addr, &format!("/v1/route?user={u}"), &[]).await;
        assert_eq!(status, 200, "{body}");
        out.insert(u.clone(), (body["node_id"].as_str().unwrap().to_owned(), body["epoch"].as_u64().unwrap()));
    }
    out
}

pub async fn until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn leader(lbs: &[LbHandle]) -> Vec<usize> {
    lbs.iter().enumerate().filter(|(_, l)| l.shared.role.borrow().lease().is_some()).map(|(i, _)| i).collect()
}
