//! The actuator against the real KEDA scaler on a real Redis (URL in
//! `RTC_TEST_REDIS_URL`, started by `scripts/test`), with stand-in nodes:
//! the load balancer's decision in Redis becomes running processes.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use redis::AsyncCommands;
use rtc_actuator::config::Config;
use rtc_actuator::controller::{self, Handle, Status};
use rtc_core::{Action, Decision, Document, Keys, Urgency};
use rtc_keda_scaler::service::{ScalerHandle, now_ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLITE: &str = r#"trap "exit 0" TERM; while :; do sleep 0.05; done"#;

fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL")
        .expect("RTC_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts Redis")
}

fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("act{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis up")
}

/// A scaler whose decisions never go stale during a test.
async fn scaler(prefix: &str) -> ScalerHandle {
    let url = redis_url();
    let args = [
        "keda-scaler",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--key-prefix",
        prefix,
        "--decision-poll-ms",
        "20",
        "--decision-max-age-ms",
        "600000",
        "--shutdown-grace-ms",
        "500",
    ];
    rtc_keda_scaler::service::start(rtc_keda_scaler::config::Config::try_parse_from(args).unwrap())
        .await
        .expect("scaler starts")
}

/// Waits until the scaler serves a decision.
async fn loaded(scaler: &ScalerHandle) {
    let mut cache = scaler.cache.clone();
    let seen = cache.wait_for(|s| matches!(s.reading, rtc_keda_scaler::cache::Reading::Decision(_)));
    tokio::time::timeout(Duration::from_secs(5), seen).await.expect("the scaler reads the decision").unwrap();
}

async fn decide(prefix: &str, desired: u32) {
    let d = Decision {
        v: 1,
        desired_replicas: desired,
        current_replicas: desired,
        action: Action::Hold,
        step: 0,
        urgency: Urgency::None,
        reason: "test".into(),
        decided_at_ms: now_ms(),
        leader_epoch: 1,
    };
    let _: () = redis().await.set(Keys::new(prefix).scale_decision(), d.to_json()).await.unwrap();
}

/// Writes an assignment listing `nodes`, the `draining` ones as such.
async fn assign(prefix: &str, nodes: &[&str], draining: &[&str]) {
    let listed: Vec<serde_json::Value> = nodes
        .iter()
        .map(|id| {
            let state = if draining.contains(id) { "draining" } else { "ready" };
            serde_json::json!({"id": id, "url": "ws://127.0.0.1:1/ws", "state": state})
        })
        .collect();
    let owner = nodes.iter().position(|n| !draining.contains(n)).unwrap();
    let raw = serde_json::json!({"v": 1, "epoch": 2, "leader_epoch": 1, "partitions": 1,
        "nodes": listed, "owners": [owner]});
    let _: () = redis().await.set(Keys::new(prefix).assignment(), raw.to_string()).await.unwrap();
}

async fn actuator(scaler: SocketAddr, prefix: &str, events: &Path, extra: &[&str]) -> Handle {
    let address = format!("http://{scaler}");
    let url = redis_url();
    let mut args = vec![
        "local-actuator",
        "--scaler-address",
        &address,
        "--sync-period-ms",
        "100",
        "--scaler-timeout-ms",
        "500",
        "--min-replicas",
        "1",
        "--max-replicas",
        "10",
        "--scale-down-stabilization-s",
        "0",
        "--redis-url",
        &url,
        "--key-prefix",
        prefix,
        "--admin-listen",
        "127.0.0.1:0",
        "--termination-grace-ms",
        "3000",
        "--socket-bin",
        "/bin/sh",
        "--events-file",
        events.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).unwrap();
    let mut template = config.pod_template();
    template.leading_args = vec!["-c".into(), POLITE.into(), "fake-node".into()];
    controller::start(config, template).await.expect("actuator starts")
}

async fn until(handle: &mut Handle, what: &str, check: impl Fn(&Status) -> bool) -> Status {
    let seen = tokio::time::timeout(Duration::from_secs(15), handle.status.wait_for(|s| check(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match seen {
        Ok(Ok(status)) => status,
        _ => panic!("timed out: {what}; last status {:#?}", *handle.status.borrow()),
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::test_kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap()).is_ok()
}

fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn events_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rtc-actuator-{name}-{}.jsonl", std::process::id()))
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_becomes_running_nodes_and_the_drained_one_goes_first() {
    let prefix = prefix();
    let scaler = scaler(&prefix).await;
    let path = events_path("e2e");
    let _ = std::fs::remove_file(&path);
    decide(&prefix, 3).await;
    let mut handle = actuator(scaler.addr, &prefix, &path, &[]).await;

    let status = until(&mut handle, "3 nodes run", |s| s.desired == 3 && s.running == 3).await;
    let ids: Vec<String> = status.pods.iter().map(|p| p.info.id.clone()).collect();
    assert_eq!(ids, ["socket-0", "socket-1", "socket-2"]);
    assert_eq!(status.spawned, 3);

    // The load balancer drained socket-0 (the oldest), then lowered the count.
    assign(&prefix, &["socket-0", "socket-1", "socket-2"], &["socket-0"]).await;
    let victim_pid = status.pods[0].info.pid;
    decide(&prefix, 2).await;
    let status = until(&mut handle, "one node stopped", |s| s.running == 2 && s.stopping == 0).await;
    assert_eq!(status.desired, 2);
    assert_eq!(status.terminated, 1);
    let left: Vec<&str> = status.pods.iter().map(|p| p.info.id.as_str()).collect();
    assert_eq!(left, ["socket-1", "socket-2"], "the drained node goes, not the newest");
    assert!(!alive(victim_pid));

    // A node that dies is replaced under a fresh name.
    let crashed = status.pods[0].info.pid;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(crashed as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let status = until(&mut handle, "the dead node replaced", |s| s.unexpected_exits == 1 && s.running == 2).await;
    assert!(status.pods.iter().any(|p| p.info.id == "socket-3"), "{status:#?}");

    let metrics = http_get(handle.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"rtc_actuator_replicas{kind="desired"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"rtc_actuator_actions_total{action="spawn"} 4"#), "{metrics}");
    assert!(http_get(handle.admin_addr, "/livez").await.ends_with("ok"));

    let pids: Vec<u32> = status.pods.iter().map(|p| p.info.pid).collect();
    let last = handle.stop().await.unwrap();
    assert_eq!((last.running, last.stopping), (0, 0));
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the actuator");
    }

    let log = events(&path);
    let kinds = |k: &str| log.iter().filter(|e| e["kind"] == k).count();
    assert_eq!(kinds("spawn"), 4);
    assert_eq!(kinds("terminate"), 3, "the scale-in victim and the two at shutdown");
    assert_eq!(kinds("exit"), 4);
    assert!(kinds("sync") >= 3);
    assert!(kinds("scale_out") >= 1 && kinds("scale_in") == 1);
    let victim = log.iter().find(|e| e["kind"] == "terminate").unwrap();
    assert_eq!(victim["nodes"], serde_json::json!(["socket-0"]));
    assert!(victim["reason"].as_str().unwrap().contains("draining"), "{victim}");
    let scale_in = log.iter().find(|e| e["kind"] == "scale_in").unwrap();
    assert!(scale_in["reason"].as_str().unwrap().contains("socket-desired-replicas=2"), "{scale_in}");
    for e in &log {
        for field in ["ts_ms", "kind", "current", "desired", "nodes", "reason"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    scaler.shutdown().await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_removes_the_highest_ordinal() {
    let prefix = prefix();
    let scaler = scaler(&prefix).await;
    let path = events_path("sts");
    decide(&prefix, 3).await;
    let mut handle = actuator(scaler.addr, &prefix, &path, &["--workload", "statefulset"]).await;
    until(&mut handle, "3 nodes run", |s| s.running == 3).await;
    // Even with another node drained, the StatefulSet controller removes the highest ordinal.
    assign(&prefix, &["socket-0", "socket-1", "socket-2"], &["socket-0"]).await;
    decide(&prefix, 2).await;
    let status = until(&mut handle, "one node stopped", |s| s.running == 2 && s.stopping == 0).await;
    let left: Vec<&str> = status.pods.iter().map(|p| p.info.id.as_str()).collect();
    assert_eq!(left, ["socket-0", "socket-1"]);
    // A dead ordinal comes back under its own name.
    let pid = status.pods[0].info.pid;
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    let status =
        until(&mut handle, "socket-0 back", |s| s.unexpected_exits == 1 && s.running == 2 && s.spawned == 4).await;
    let left: Vec<&str> = status.pods.iter().map(|p| p.info.id.as_str()).collect();
    assert_eq!(left, ["socket-0", "socket-1"]);
    handle.stop().await.unwrap();
    scaler.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_scaler_falls_back_after_the_threshold() {
    let prefix = prefix();
    let scaler = scaler(&prefix).await;
    let path = events_path("fallback");
    let _ = std::fs::remove_file(&path);
    decide(&prefix, 2).await;
    loaded(&scaler).await;
    let extra = ["--fallback-replicas", "4", "--fallback-failure-threshold", "2"];
    let mut handle = actuator(scaler.addr, &prefix, &path, &extra).await;
    until(&mut handle, "2 nodes run", |s| s.running == 2).await;

    scaler.shutdown().await;
    let status = until(&mut handle, "fallback to 4", |s| s.fallback && s.running == 4).await;
    assert!(status.scaler_failures > 2, "{status:#?}");
    handle.stop().await.unwrap();

    let log = events(&path);
    let syncs: Vec<&serde_json::Value> = log.iter().filter(|e| e["kind"] == "sync").collect();
    // Failures 1 and 2 hold the count; the third applies the fallback.
    let last_ok = syncs.iter().rposition(|e| e["detail"]["external"]["failures"] == 0).unwrap();
    let failing: Vec<(u64, bool, u64)> = syncs[last_ok + 1..]
        .iter()
        .map(|e| {
            let x = &e["detail"]["external"];
            (x["failures"].as_u64().unwrap(), x["fallback"].as_bool().unwrap(), e["desired"].as_u64().unwrap())
        })
        .take(3)
        .collect();
    assert_eq!(failing, [(1, false, 2), (2, false, 2), (3, true, 4)]);
    let _ = std::fs::remove_file(&path);
}
