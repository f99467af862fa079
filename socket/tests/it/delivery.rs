//! Kafka → the right session, once, with a stable id; client sends are
//! produced to the recipient's partition and acknowledged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use rtc_socket::hub::{Delivery, Held};
use rtc_socket::server::NodeHandle;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_reaches_every_session_of_its_user_once() {
    let mut world = World::new(8).await;
    let node = world.serving_node("socket-a", &[]).await;
    let mut a1 = Client::join(&node, &world.token("alice", &node, 1)).await;
    let mut a2 = Client::join(&node, &world.token("alice", &node, 1)).await;
    let mut bob = Client::join(&node, &world.token("bob", &node, 1)).await;

    let producer = world.producer().await;
    let (partition, offset) = world.produce(&producer, "alice", "{\"text\":\"hi\"}").await;
    assert_eq!(partition as u32, rtc_core::partition_for_key(b"alice", 8), "Java partitioner");
    for client in [&mut a1, &mut a2] {
        let m = client.next_json().await.unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["id"], json!(format!("{partition}:{offset}")));
        assert_eq!(m["body"], "{\"text\":\"hi\"}");
        assert!(m["ts_ms"].as_i64().unwrap() > 0);
    }
    // Bob gets nothing, and alice nothing twice.
    assert_eq!(bob.next_json_within(Duration::from_millis(300)).await, None);
    assert_eq!(a1.next_json_within(Duration::from_millis(300)).await, None);
    assert_eq!(metric(&node, "rtc_socket_messages_delivered_total").await, 2.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_produced_to_the_recipient_and_acknowledged() {
    let mut world = World::new(8).await;
    let node = world.serving_node("socket-a", &[]).await;
    let mut alice = Client::join(&node, &world.token("alice", &node, 1)).await;
    let mut bob = Client::join(&node, &world.token("bob", &node, 1)).await;

    alice.send_json(json!({"type":"send","to":"bob","body":"hello bob","client_msg_id":"c-1"})).await;
    let ack = alice.next_json().await.unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["client_msg_id"], "c-1");
    let id = ack["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with(&format!("{}:", rtc_core::partition_for_key(b"bob", 8))), "{id}");
    let m = bob.next_json().await.unwrap();
    assert_eq!(
        (m["id"].as_str().unwrap(), m["from"].as_str().unwrap(), m["body"].as_str().unwrap()),
        (id.as_str(), "alice", "hello bob")
    );
    // Bob's client needs it to drop the second copy of a send Alice retries.
    assert_eq!(m["client_msg_id"], "c-1", "{m}");
    node.shutdown().await;
}

/// Joins `user`, lets it receive `seen` messages, drops it, and produces
/// `missed` more. Returns every id in order and the producer.
async fn away_for(world: &World, node: &NodeHandle, user: &str, seen: usize, missed: usize) -> Vec<String> {
    let producer = world.producer().await;
    let mut client = Client::join(node, &world.token(user, node, 1)).await;
    let mut ids = Vec::new();
    for i in 0..seen {
        world.produce(&producer, user, &format!("m{i}")).await;
        ids.push(client.next_json().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    drop(client);
    let hub = node.hub.clone();
    eventually("the session is gone", Duration::from_secs(5), async || hub.connections() == 0).await;
    for i in seen..seen + missed {
        let (p, o) = world.produce(&producer, user, &format!("m{i}")).await;
        ids.push(format!("{p}:{o}"));
    }
    let consumed = (seen + missed) as f64;
    eventually("every record consumed", Duration::from_secs(5), async || {
        metric(node, "rtc_socket_messages_consumed_total").await >= consumed
    })
    .await;
    ids
}

fn ids_of(frames: &[serde_json::Value]) -> Vec<String> {
    frames.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_at_connect_replays_the_gap_in_order_then_says_resumed() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &[]).await;
    let ids = away_for(&world, &node, "carol", 3, 2).await;
    let (mut again, replayed, resumed) = Client::resume(&node, &world.token("carol", &node, 1), &ids[2]).await;
    assert_eq!(ids_of(&replayed), ids[3..5]);
    assert_eq!(resumed, json!({"type":"resumed","last_id":ids[2],"recovered":true,"replayed":2}));
    // Live after the replay.
    let producer = world.producer().await;
    let (p, o) = world.produce(&producer, "carol", "live").await;
    assert_eq!(again.next_json().await.unwrap()["id"], json!(format!("{p}:{o}")));
    // The gap was in memory: no log read, and replays stay out of the latency.
    assert_eq!(metric(&node, "rtc_socket_resume_cache_hits_total").await, 1.0);
    assert_eq!(metric(&node, "rtc_socket_catchup_reads_total").await, 0.0);
    assert_eq!(metric(&node, "rtc_socket_messages_replayed_total").await, 2.0);
    assert_eq!(metric(&node, "rtc_socket_delivery_latency_seconds_count").await, 4.0, "3 + 1 live");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_cache_no_longer_holds_is_read_from_the_log() {
    let mut world = World::new(4).await;
    // One cached message per user: the cache cannot hold a gap of four.
    let node = world.serving_node("socket-a", &["--resume-buffer", "1"]).await;
    let ids = away_for(&world, &node, "dan", 2, 4).await;
    let (_again, replayed, resumed) = Client::resume(&node, &world.token("dan", &node, 1), &ids[0]).await;
    assert_eq!(ids_of(&replayed), ids[1..6]);
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["replayed"], 5);
    assert_eq!(metric(&node, "rtc_socket_catchup_reads_total").await, 1.0);
    assert!(metric(&node, "rtc_socket_catchup_scanned_total").await >= 5.0);
    assert_eq!(metric(&node, "rtc_socket_catchup_scan_records_count").await, 1.0, "one pass");
    assert!(metric(&node, "rtc_socket_catchup_scan_records_sum").await >= 5.0);
    assert_eq!(metric(&node, "rtc_socket_resume_cache_hits_total").await, 0.0);
    node.shutdown().await;
}

const BUDGET: usize = 64 * 1024;

/// A node with a `BUDGET`-byte memory budget, a user "erin" who missed 30
/// messages (from the log: one cached message per user), and a filler
/// holding nearly all of the budget so no replayed record fits. Returns the
/// ids, the filler, and the task that resumes erin and collects her frames
/// up to `resumed`.
async fn resume_with_the_budget_spent(
    world: &mut World,
    extra: &[&str],
) -> (NodeHandle, Vec<String>, Held, tokio::task::JoinHandle<Vec<serde_json::Value>>) {
    let budget = BUDGET.to_string();
    let mut flags = vec!["--resume-buffer", "1", "--memory-budget-bytes", &budget];
    flags.extend(extra);
    let node = world.serving_node("socket-a", &flags).await;
    let ids = away_for(world, &node, "erin", 1, 30).await;
    let filler = Arc::new(Delivery {
        partition: 0,
        offset: 0,
        ts_ms: 0,
        frame: "x".repeat(BUDGET - node.hub.held_bytes() - 10).into(),
        buffered_at: tokio::time::Instant::now(),
    });
    let held = node.hub.budget().hold(&filler).expect("fits");
    let token = world.token("erin", &node, 1);
    let (addr, last_id) = (node.ws_addr, ids[0].clone());
    let resume = tokio::spawn(async move {
        let url = format!("ws://{addr}/ws?token={token}&last_id={last_id}");
        let mut client = Client::connect_url(&url).await.expect("admitted");
        let mut frames = Vec::new();
        while let Some(frame) = client.next_json_within(Duration::from_secs(20)).await {
            let done = frame["type"] == "resumed";
            frames.push(frame);
            if done {
                break;
            }
        }
        frames
    });
    eventually("the replay paused for the budget", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_budget_evictions_total{what=\"replay\"}").await > 0.0
    })
    .await;
    (node, ids, held, resume)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_waits_for_room_in_the_memory_budget_and_arrives_whole() {
    let mut world = World::new(4).await;
    let (node, ids, held, resume) = resume_with_the_budget_spent(&mut world, &[]).await;
    assert!(!resume.is_finished(), "nothing replayed while the budget is spent");
    drop(held);
    let frames = resume.await.unwrap();
    assert_eq!(frames[0]["type"], "welcome");
    let messages: Vec<_> = frames.iter().filter(|f| f["type"] == "message").cloned().collect();
    assert_eq!(ids_of(&messages), ids[1..31], "every record, in order, once");
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["replayed"], 30);
    assert!(metric(&node, "rtc_socket_catchup_reads_total").await > 1.0, "paused, then read on");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_makes_no_progress_in_time_is_tried_again_never_given_up() {
    // The log still holds every record: a replay that cannot go on now (no
    // room, or a broker too slow to answer) must not become a gap. The
    // session ends asking the client to resume again from the same id.
    let mut world = World::new(4).await;
    let stall = ["--resume-stall-timeout-ms", "500"];
    let (node, ids, held, resume) = resume_with_the_budget_spent(&mut world, &stall).await;
    let frames = tokio::time::timeout(Duration::from_secs(10), resume).await.expect("ended in time").unwrap();
    assert!(frames.iter().all(|f| f["type"] != "resumed"), "no resumed, so the client keeps its id: {frames:?}");
    let last = frames.last().unwrap();
    assert_eq!((last["type"].as_str(), last["reason"].as_str()), (Some("disconnect"), Some("unavailable")), "{last}");
    assert_eq!(last["reconnect"], true);
    assert!(last["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 500), "{last}");
    // Counted once the server's side of the session has ended.
    eventually("the disconnect is counted", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_disconnects_total{reason=\"unavailable\"}").await == 1.0
    })
    .await;
    assert_eq!(metric(&node, "rtc_socket_resume_unrecovered_total{reason=\"unavailable\"}").await, 0.0);
    // Room again: the same id gets every record, in order.
    drop(held);
    let (_erin, replayed, resumed) = Client::resume(&node, &world.token("erin", &node, 1), &ids[0]).await;
    assert_eq!(ids_of(&replayed), ids[1..31], "every record, in order, once");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_frame_first_still_works_and_live_messages_wait_for_it() {
    // (Ids are compared as the client would: one comparison per message.)
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--resume-frame-wait-ms", "2000"]).await;
    let ids = away_for(&world, &node, "frank", 1, 1).await;
    let mut again = Client::join(&node, &world.token("frank", &node, 1)).await;
    // A live message arrives before the client's first frame: it waits.
    let producer = world.producer().await;
    let (p, o) = world.produce(&producer, "frank", "live").await;
    let consumed = 3.0;
    eventually("the live record is consumed", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_messages_consumed_total").await >= consumed
    })
    .await;
    again.send_json(json!({"type":"resume","last_id": ids[0]})).await;
    // The replay runs up to the session's live start; the live message,
    // queued meanwhile, follows it once.
    assert_eq!(again.next_json().await.unwrap()["id"], json!(ids[1]), "the gap first");
    let resumed = again.next_json().await.unwrap();
    assert_eq!((resumed["type"].as_str(), resumed["replayed"].as_u64()), (Some("resumed"), Some(1)));
    assert_eq!(again.next_json().await.unwrap()["id"], json!(format!("{p}:{o}")), "then live");
    // A second resume is refused: ids only grow within a session.
    again.send_json(json!({"type":"resume","last_id": ids[0]})).await;
    assert_eq!(again.next_json().await.unwrap()["code"], "bad_frame");
    assert_eq!(again.next_json_within(Duration::from_millis(300)).await, None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_that_cannot_recover_say_why_and_go_live() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--resume-max-records", "3", "--resume-buffer", "1"]).await;
    let ids = away_for(&world, &node, "gina", 1, 5).await;
    let other = (rtc_core::partition_for_key(b"gina", 4) + 1) % 4;
    for (last_id, reason) in [
        (ids[0].clone(), "too_far_behind"),
        (format!("{other}:0"), "wrong_partition"),
        ("nonsense".to_owned(), "bad_id"),
    ] {
        let token = world.token("gina", &node, 1);
        let (mut client, replayed, resumed) = Client::resume(&node, &token, &last_id).await;
        assert!(replayed.is_empty(), "{reason}");
        assert_eq!(resumed, json!({"type":"resumed","last_id":last_id,"recovered":false,"replayed":0,"reason":reason}));
        let producer = world.producer().await;
        let (p, o) = world.produce(&producer, "gina", "live").await;
        assert_eq!(client.next_json().await.unwrap()["id"], json!(format!("{p}:{o}")), "{reason}: live after");
    }
    for reason in ["too_far_behind", "wrong_partition", "bad_id"] {
        let series = format!("rtc_socket_resume_unrecovered_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&node, &series).await, 1.0, "{series}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_id_below_the_log_start_is_expired() {
    // librdkafka's mock cluster keeps at most 5 MiB per partition: 400
    // records of 16 KiB push the log start past the first ones, as
    // retention would.
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &[]).await;
    let ids = away_for(&world, &node, "hugo", 1, 0).await;
    let producer = world.producer().await;
    let body = "x".repeat(16 * 1024);
    for _ in 0..400 {
        world.produce(&producer, "hugo", &body).await;
    }
    eventually("the node caught up", Duration::from_secs(10), async || {
        metric(&node, "rtc_socket_messages_consumed_total").await >= 401.0
    })
    .await;
    let (mut client, replayed, resumed) = Client::resume(&node, &world.token("hugo", &node, 1), &ids[0]).await;
    assert!(replayed.is_empty());
    assert_eq!(resumed, json!({"type":"resumed","last_id":ids[0],"recovered":false,"replayed":0,"reason":"expired"}));
    assert_eq!(metric(&node, "rtc_socket_resume_unrecovered_total{reason=\"expired\"}").await, 1.0);
    // Live from here on.
    let (p, o) = world.produce(&producer, "hugo", "live").await;
    assert_eq!(client.next_json().await.unwrap()["id"], json!(format!("{p}:{o}")));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumers_of_one_partition_share_one_read_of_the_log() {
    const P: u32 = 4;
    let mut world = World::new(P).await;
    // No cache, and a gather window every resumer below arrives within.
    let node = world.serving_node("socket-a", &["--resume-buffer", "0", "--resume-gather-ms", "1000"]).await;
    let users: Vec<String> = (0..200)
        .map(|i| format!("share-{i}"))
        .filter(|u| rtc_core::partition_for_key(u.as_bytes(), P) == 1)
        .take(6)
        .collect();
    assert_eq!(users.len(), 6);
    // Admitted once the partition accepts users (its start offset is known).
    drop(Client::join(&node, &world.token(&users[0], &node, 1)).await);
    // Each user has a first message it saw (its last id) and three it missed.
    let producer = world.producer().await;
    let mut seen = Vec::new();
    let mut missed: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    for u in &users {
        let (p, o) = world.produce(&producer, u, "seen").await;
        seen.push(format!("{p}:{o}"));
    }
    for round in 0..3 {
        for (i, u) in users.iter().enumerate() {
            let (p, o) = world.produce(&producer, u, &format!("missed-{round}")).await;
            missed[i].push(format!("{p}:{o}"));
        }
    }
    let total = (users.len() * 4) as f64;
    eventually("every record consumed", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_messages_consumed_total").await >= total
    })
    .await;
    // All resume at once.
    let resumes = users.iter().zip(&seen).map(|(u, last)| {
        let token = world.token(u, &node, 1);
        let (node, last) = (&node, last.clone());
        async move { Client::resume(node, &token, &last).await }
    });
    let results = futures_util::future::join_all(resumes).await;
    for ((_, replayed, resumed), want) in results.iter().zip(&missed) {
        assert_eq!(&ids_of(replayed), want, "{resumed}");
        assert_eq!(resumed["recovered"], true);
    }
    assert_eq!(metric(&node, "rtc_socket_catchup_reads_total").await, 1.0, "one shared read of partition 1");
    node.shutdown().await;
}
