//! The scaling loop on a real Redis: the leader writes a fenced decision
//! every tick, drains a victim (its partitions move away) before lowering
//! the desired count, and explains itself on `/v1/decisions` and `/metrics`.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use rtc_core::{Action, Decision, Document};
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

const FAST: [&str; 14] = [
    "--decision-interval-ms",
    "100",
    "--scale-in-window-ms",
    "1500",
    "--scale-in-cooldown-ms",
    "0",
    "--scale-node-startup-ms",
    "1000",
    "--scale-trend-window-ms",
    "2000",
    "--scale-drain-deadline-ms",
    "60000",
    "--min-replicas",
    "2",
];

async fn decision(prefix: &str) -> Option<Decision> {
    let url = std::env::var("RTC_TEST_REDIS_URL").unwrap();
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let raw: Option<String> = conn.get(rtc_core::Keys::new(prefix).scale_decision()).await.unwrap();
    raw.map(|r| Decision::from_json(r.as_bytes()).unwrap())
}

fn owners_of(assignment: &Value, node: &str) -> usize {
    let index = assignment["nodes"].as_array().unwrap().iter().position(|n| n["id"] == node).unwrap() as u64;
    assignment["owners"].as_array().unwrap().iter().filter(|o| o.as_u64() == Some(index)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_drains_a_victim_before_lowering_desired() {
    let prefix = prefix();
    let a = lb(&prefix, "lb-a", &FAST).await;
    let b = lb(&prefix, "lb-b", &FAST).await;
    let load = Load::default();
    for (node, users) in [("socket-0", 10), ("socket-1", 5), ("socket-2", 20)] {
        load.lock().unwrap().insert(node.to_owned(), users);
    }
    let stop = CancellationToken::new();
    beat_with(&prefix, &["socket-0", "socket-1", "socket-2"], stop.clone(), load.clone());

    until("a decision for three nodes", Duration::from_secs(5), async || {
        decision(&prefix).await.is_some_and(|d| d.desired_replicas == 3 && d.current_replicas == 3)
    })
    .await;
    let first = decision(&prefix).await.unwrap();
    assert_eq!(first.action, Action::Hold);
    let lbs = [a, b];
    let index = leader(&lbs)[0];
    let (leader, follower) = (&lbs[index], &lbs[1 - index]);
    assert_eq!(Some(first.leader_epoch), leader.shared.role.borrow().lease().map(|l| l.epoch), "stamped and fenced");

    // Calm for the whole window: the emptiest node is drained first, its
    // partitions move away while desired stays 3.
    until("socket-1 drained by the assignment", Duration::from_secs(8), async || {
        let a = get(leader.admin_addr, "/v1/assignment", &[]).await.1;
        a["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["id"] == "socket-1" && n["state"] == "draining"))
    })
    .await;
    let assignment = get(leader.admin_addr, "/v1/assignment", &[]).await.1;
    assert_eq!(owners_of(&assignment, "socket-1"), 0);
    assert_eq!((owners_of(&assignment, "socket-0"), owners_of(&assignment, "socket-2")), (6, 6));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = decision(&prefix).await.unwrap();
    assert_eq!((d.action, d.desired_replicas), (Action::Hold, 3), "not lowered while users remain: {}", d.reason);
    assert!(d.reason.contains("draining socket-1"), "{}", d.reason);

    // Its users left: now desired goes down.
    load.lock().unwrap().insert("socket-1".to_owned(), 0);
    until("scale-in", Duration::from_secs(5), async || {
        decision(&prefix).await.is_some_and(|d| d.action == Action::ScaleIn || d.desired_replicas == 2)
    })
    .await;
    let d = decision(&prefix).await.unwrap();
    assert_eq!((d.current_replicas, d.desired_replicas), (3, 2), "{}", d.reason);

    let (status, body) = get(leader.admin_addr, "/v1/decisions?limit=500", &[]).await;
    assert_eq!((status, body["leader"].as_bool()), (200, Some(true)));
    let records = body["decisions"].as_array().unwrap();
    let drained = records.iter().find(|r| r["decision"]["action"] == "scale_in").expect("the scale-in is recorded");
    assert_eq!(drained["code"], "drained");
    assert_eq!(drained["inputs"]["live"], 3);
    assert!(records.iter().any(|r| r["code"] == "draining"), "the drain came first");
    let (_, followed) = get(follower.admin_addr, "/v1/decisions", &[]).await;
    assert_eq!(followed["leader"].as_bool(), Some(false));
    assert!(!followed["decisions"].as_array().unwrap().is_empty(), "followers show what the leader wrote");

    let (_, metrics) = get_text(leader.admin_addr, "/metrics", &[]).await;
    assert!(metrics.contains(r#"rtc_lb_scale_signals_total{direction="in",reason="drained"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"rtc_lb_scale_signals_total{direction="hold",reason="draining"}"#));
    assert!(metrics.contains("rtc_lb_desired_replicas 2"), "{metrics}");
    assert!(metrics.contains("rtc_lb_current_replicas 3"));
    assert!(metrics.contains(r#"rtc_lb_nodes{state="ready"} 3"#));
    stop.cancel();
    for l in lbs {
        l.shutdown().await;
    }
}
