//! Shared by the scaler's tests: scalers on a real Redis (started by
//! `scripts/test`, URL in `RTC_TEST_REDIS_URL`) with a key prefix of their
//! own, decisions written straight to Redis, a TCP proxy to Redis that can be
//! cut, and small gRPC / HTTP helpers.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use redis::AsyncCommands;
use rtc_core::{Action, Decision, Document, Keys, Urgency};
use rtc_keda_scaler::config::Config;
use rtc_keda_scaler::proto::external_scaler_client::ExternalScalerClient;
use rtc_keda_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use rtc_keda_scaler::service::{ScalerHandle, now_ms, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::Channel;

pub fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL")
        .expect("RTC_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts Redis")
}

pub fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("ks{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A scaler on `redis_url` with key prefix `prefix`: ephemeral ports, a
/// 20 ms poll, a 1 s decision interval (stale after 3 s), plus `extra` flags.
pub async fn scaler_on(redis_url: &str, prefix: &str, extra: &[&str]) -> ScalerHandle {
    let mut args = vec![
        "keda-scaler",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--redis-url",
        redis_url,
        "--key-prefix",
        prefix,
        "--decision-interval-ms",
        "1000",
        "--decision-poll-ms",
        "20",
        "--redis-timeout-ms",
        "300",
        "--shutdown-grace-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    start(Config::try_parse_from(args).unwrap()).await.expect("scaler starts")
}

pub async fn scaler(prefix: &str, extra: &[&str]) -> ScalerHandle {
    scaler_on(&redis_url(), prefix, extra).await
}

pub async fn client(addr: SocketAddr) -> ExternalScalerClient<Channel> {
    ExternalScalerClient::connect(format!("http://{addr}")).await.expect("connects")
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis up")
}

pub fn decision(desired: u32, decided_at_ms: u64) -> Decision {
    Decision {
        v: 1,
        desired_replicas: desired,
        current_replicas: desired.max(1),
        action: Action::Hold,
        step: 0,
        urgency: Urgency::None,
        reason: "test".into(),
        decided_at_ms,
        leader_epoch: 3,
    }
}

/// Writes a decision made now, as the load-balancer leader would.
pub async fn decide(prefix: &str, desired: u32) -> Decision {
    let d = decision(desired, now_ms());
    write_raw(prefix, &d.to_json()).await;
    d
}

pub async fn write_raw(prefix: &str, raw: &str) {
    let _: () = redis().await.set(Keys::new(prefix).scale_decision(), raw).await.unwrap();
}

pub async fn delete(prefix: &str) {
    let _: () = redis().await.del(Keys::new(prefix).scale_decision()).await.unwrap();
}

/// Waits until the scaler's cache holds exactly `d`.
pub async fn cached(scaler: &ScalerHandle, d: &Decision) {
    let mut cache = scaler.cache.clone();
    let seen = cache.wait_for(|s| matches!(&s.reading, rtc_keda_scaler::cache::Reading::Decision(c) if **c == *d));
    tokio::time::timeout(Duration::from_secs(3), seen).await.expect("decision reaches the cache").unwrap();
}

pub fn reference(metric: Option<&str>) -> ScaledObjectRef {
    let mut scaler_metadata = HashMap::new();
    scaler_metadata.insert("scalerAddress".to_owned(), "keda-scaler.rtc:9090".to_owned());
    if let Some(m) = metric {
        scaler_metadata.insert("metricName".to_owned(), m.to_owned());
    }
    ScaledObjectRef { name: "socket".into(), namespace: "rtc".into(), scaler_metadata }
}

pub fn metrics_request(metric: &str) -> GetMetricsRequest {
    GetMetricsRequest { scaled_object_ref: Some(reference(Some(metric))), metric_name: metric.to_owned() }
}

pub async fn until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// A TCP proxy in front of Redis that can be cut (every connection closed
/// and new ones refused at once), as a network partition or a Redis outage
/// would, without touching the Redis the other tests share.
pub struct Proxy {
    pub url: String,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_url: &str) -> Proxy {
        let upstream = upstream_url.trim_start_matches("redis://").split('/').next().unwrap().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if *cut_rx.borrow() {
                    continue; // dropped: closed at once
                }
                let (mut cut_rx, upstream) = (cut_rx.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { url, cut, task }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
