//! Process management with stand-in nodes: small shell loops instead of the
//! socket binary (they ignore the node flags, which `sh -c` takes as
//! positional parameters).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtc_actuator::pods::{PodExit, PodTemplate, Pods};

/// Stops on SIGTERM, like a node that drains quickly.
const POLITE: &str = r#"trap "exit 0" TERM; echo armed; while :; do sleep 0.05; done"#;
/// Ignores SIGTERM: only SIGKILL stops it.
const STUBBORN: &str = r#"trap "" TERM; echo armed; while :; do sleep 0.05; done"#;
/// Dies on its own.
const CRASHING: &str = "sleep 0.2; exit 3";

/// A log folder of the test's own.
fn log_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rtc-actuator-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Waits until the pod's script has set its signal trap (a signal before
/// that would meet the shell's default action).
async fn armed(dir: &Path, id: &str) {
    let path = dir.join(format!("{id}.log"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&path).unwrap_or_default().contains("armed") {
        assert!(tokio::time::Instant::now() < deadline, "{id} never armed its trap");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn template(script: &str, grace: Duration) -> PodTemplate {
    PodTemplate {
        program: "/bin/sh".into(),
        leading_args: vec!["-c".into(), script.into(), "fake-node".into()],
        shared_args: vec!["--redis-url".into(), "redis://127.0.0.1:1".into()],
        extra_args: vec![],
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        log_dir: None,
        grace,
        parent_death_signal: true,
    }
}

fn alive(pid: u32) -> bool {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::test_kill_process(pid).is_ok()
}

async fn next_exit(pods: &mut Pods) -> PodExit {
    tokio::time::timeout(Duration::from_secs(10), pods.next_exit()).await.expect("a pod exits in time")
}

#[tokio::test]
async fn pods_start_on_distinct_ports_and_stop_on_sigterm() {
    let dir = log_dir("sigterm");
    let mut t = template(POLITE, Duration::from_secs(5));
    t.log_dir = Some(dir.clone());
    let mut pods = Pods::new(t);
    let mut pids = vec![];
    for i in 0..3 {
        let info = pods.spawn(format!("socket-{i}"), i).unwrap().clone();
        assert!(alive(info.pid));
        assert_ne!(info.listen, info.admin_listen);
        pids.push(info.pid);
        armed(&dir, &info.id).await;
    }
    assert!(pods.spawn("socket-1".into(), 1).is_err(), "names are unique");
    let mut ports: Vec<u16> = pods.all().flat_map(|p| [p.listen.port(), p.admin_listen.port()]).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6);

    assert!(pods.terminate("socket-1"));
    assert!(!pods.terminate("socket-1"), "already stopping");
    assert_eq!(pods.running().count(), 2, "a stopping pod no longer counts");
    let exit = next_exit(&mut pods).await;
    assert_eq!((exit.id.as_str(), exit.requested, exit.killed, exit.code), ("socket-1", true, false, Some(0)));
    assert!(!alive(pids[1]));
    assert_eq!(pods.len(), 2);

    let stopped = pods.terminate_all();
    assert_eq!(stopped.len(), 2);
    for _ in 0..2 {
        let exit = next_exit(&mut pods).await;
        assert!(exit.requested && !exit.killed, "{exit:?}");
    }
    assert!(pods.is_empty());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_pod_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = log_dir("sigkill");
    let mut t = template(STUBBORN, Duration::from_millis(300));
    t.log_dir = Some(dir.clone());
    let mut pods = Pods::new(t);
    let pid = pods.spawn("socket-0".into(), 0).unwrap().pid;
    armed(&dir, "socket-0").await;
    pods.terminate("socket-0");
    let exit = next_exit(&mut pods).await;
    assert!(exit.requested && exit.killed, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    assert!(exit.stop_ms.unwrap() >= 300, "{exit:?}");
    assert!(!alive(pid));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_unexpected_exit_is_reported_as_such() {
    let mut pods = Pods::new(template(CRASHING, Duration::from_secs(1)));
    pods.spawn("socket-0".into(), 0).unwrap();
    let exit = next_exit(&mut pods).await;
    assert!(!exit.requested, "{exit:?}");
    assert_eq!(exit.code, Some(3));
    assert!(pods.is_empty());
}

#[tokio::test]
async fn dropping_the_pods_kills_every_child() {
    let mut pods = Pods::new(template(STUBBORN, Duration::from_secs(60)));
    let pids: Vec<u32> = (0..2).map(|i| pods.spawn(format!("socket-{i}"), i).unwrap().pid).collect();
    drop(pods);
    // kill_on_drop sends SIGKILL; tokio reaps the children in the background.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(tokio::time::Instant::now() < deadline, "children survived the drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn logs_go_to_one_file_per_node() {
    let dir = log_dir("logs");
    let mut t = template(
        r#"echo "hello from $0 $2"; trap "exit 0" TERM; while :; do sleep 0.05; done"#,
        Duration::from_secs(5),
    );
    t.log_dir = Some(dir.clone());
    let mut pods = Pods::new(t);
    let info = pods.spawn("socket-7".into(), 7).unwrap().clone();
    let path = dir.join("socket-7.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // `$2` is the value of `--listen`: the per-pod flags come first.
        if text.contains(&format!("hello from fake-node {}", info.listen)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "log not written: {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pods.terminate_all();
    next_exit(&mut pods).await;
    std::fs::remove_dir_all(dir).unwrap();
}
