//! A partition moves from node A to node B while messages flow to its
//! users: every online user receives every message at least once (deduped
//! by id), no session stays on A, and B continues from A's offsets.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use rtc_core::protocol::{Cursor, MessageId};
use serde_json::Value;
use tokio::sync::watch;

use crate::support::*;

/// The test's stand-in for the load balancer's routing table.
struct Routes {
    epoch: u64,
    owner: Vec<usize>,
    nodes: Vec<(String, std::net::SocketAddr)>,
}

/// A user following the client protocol: on `disconnect`, wait
/// `retry_after_ms`, ask for a route, reconnect with the last id, and drop
/// any id not above the last one (the whole client-side dedupe). Returns
/// what it received, its reconnects and the nodes that welcomed it.
async fn user_session(
    user: String,
    partitions: u32,
    routes: Arc<Mutex<Routes>>,
    mut expected: watch::Receiver<Option<BTreeSet<String>>>,
) -> (BTreeSet<String>, u32, Vec<String>) {
    let mut received = BTreeSet::new();
    let mut cursor = Cursor::default();
    let mut reconnects = 0;
    let mut welcomed_by = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    'connect: while tokio::time::Instant::now() < deadline {
        let (node_id, addr, epoch) = {
            let r = routes.lock().unwrap();
            let p = rtc_core::partition_for_key(user.as_bytes(), partitions) as usize;
            let (id, addr) = r.nodes[r.owner[p]].clone();
            (id, addr, r.epoch)
        };
        let token = token_for(&user, &node_id, rtc_core::partition_for_key(user.as_bytes(), partitions), epoch);
        let url = format!("ws://{addr}/ws?token={token}{}", cursor.query());
        let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut client = Client { ws };
        let welcome = client.next_json().await.expect("welcome");
        welcomed_by.push(welcome["node_id"].as_str().unwrap().to_owned());
        cursor.welcomed(welcome["live_from"].as_str().map(|id| id.parse().unwrap()));
        loop {
            let done = expected.borrow().as_ref().is_some_and(|e| e.is_subset(&received));
            if done || tokio::time::Instant::now() >= deadline {
                return (received, reconnects, welcomed_by);
            }
            tokio::select! {
                frame = client.next_json_within(Duration::from_millis(200)) => match frame {
                    Some(m) if m["type"] == "message" => {
                        let id: MessageId = m["id"].as_str().unwrap().parse().unwrap();
                        if cursor.accept(id) {
                            received.insert(id.to_string());
                        }
                    }
                    Some(r) if r["type"] == "resumed" => {
                        assert_eq!(r["recovered"], true, "{user}: {r}");
                        cursor.resumed(true);
                    }
                    Some(d) if d["type"] == "disconnect" => {
                        assert_eq!(d["reason"], "rebalance");
                        cursor.disconnected(d["through"].as_str().map(|id| id.parse().unwrap()));
                        let wait = d["retry_after_ms"].as_u64().unwrap();
                        assert!(wait <= 200, "retry_after_ms {wait}");
                        drop(client);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        reconnects += 1;
                        continue 'connect;
                    }
                    Some(_) => {}
                    // Quiet for a moment: re-check the expectation.
                    None => {}
                },
                _ = expected.changed() => {}
            }
        }
    }
    // Out of time: the caller reports what is missing.
    (received, reconnects, welcomed_by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_partitions_loses_no_message() {
    const P: u32 = 8;
    let mut world = World::new(P).await;
    let (a, b) = world.two_nodes(|_| 0).await;

    let routes = Arc::new(Mutex::new(Routes {
        epoch: 1,
        owner: vec![0; P as usize],
        nodes: vec![(a.node_id.clone(), a.ws_addr), (b.node_id.clone(), b.ws_addr)],
    }));
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    // Each user learns what it should have received once production ends.
    let (expected_tx, sessions): (Vec<_>, Vec<_>) = users
        .iter()
        .map(|u| {
            let (tx, rx) = watch::channel(None);
            (tx, tokio::spawn(user_session(u.clone(), P, routes.clone(), rx)))
        })
        .unzip();
    eventually("every user is connected to A", Duration::from_secs(10), async || a.hub.connections() == 40).await;

    // Messages flow for ~1 s; the odd partitions move to B after 300 ms.
    let producer = world.producer().await;
    let mut deliveries = Vec::new();
    for round in 0..50 {
        if round == 15 {
            world.publish(2, &[&a, &b], |p| (p % 2) as usize).await;
            let mut r = routes.lock().unwrap();
            r.epoch = 2;
            r.owner = (0..P).map(|p| (p % 2) as usize).collect();
        }
        for u in &users {
            let record = FutureRecord::to(&world.topic).key(u.as_str()).payload("m");
            deliveries.push((u.clone(), producer.send_result(record).map_err(|(e, _)| e).unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut expected: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (user, delivery) in deliveries {
        let d = delivery.await.unwrap().unwrap();
        expected.entry(user).or_default().insert(format!("{}:{}", d.partition, d.offset));
    }
    let total: usize = expected.values().map(BTreeSet::len).sum();
    assert_eq!(total, 2000);

    // Each session waits for its own expected set.
    let mut moved_users = 0;
    for (user, tx) in users.iter().zip(&expected_tx) {
        tx.send_replace(Some(expected[user].clone()));
    }
    for (user, session) in users.iter().zip(sessions) {
        let mine = &expected[user];
        let (received, reconnects, welcomed_by) =
            tokio::time::timeout(Duration::from_secs(30), session).await.expect("session finished").unwrap();
        assert!(mine.is_subset(&received), "{user} missed {:?}", mine.difference(&received).collect::<Vec<_>>());
        let p = rtc_core::partition_for_key(user.as_bytes(), P);
        if p % 2 == 1 {
            moved_users += 1;
            assert_eq!(reconnects, 1, "{user} moved once");
            assert_eq!(welcomed_by, vec!["socket-a", "socket-b"], "{user}");
        } else {
            assert_eq!(reconnects, 0, "{user} stayed");
        }
    }
    assert!(moved_users > 5, "the test moves users: {moved_users}");

    // Nothing of a moved partition is left on A; B took them over.
    for p in (1..P).step_by(2) {
        assert_eq!(a.hub.connections_on(p), 0, "partition {p} left on A");
        assert!(b.ownership.view().accepting.contains(&p));
    }
    assert_eq!(a.ownership.acked_epoch(), 2);
    assert_eq!(metric(&a, "rtc_socket_handoffs_total{direction=\"release\"}").await, 4.0);
    assert_eq!(metric(&b, "rtc_socket_handoffs_total{direction=\"acquire\"}").await, 4.0);
    assert_eq!(metric(&b, "rtc_socket_handoff_timeouts_total{direction=\"acquire\"}").await, 0.0);
    a.shutdown().await;
    b.shutdown().await;
}

/// `rtc_socket_reconnect_seconds` on the node that takes a partition over
/// counts each moved user once, from the takeover to the welcome; users of
/// a partition it owned from the start, and new users (who do not resume),
/// are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_time_is_measured_for_moved_users_only() {
    const P: u32 = 8;
    // Epoch 1: B owns p % 4 == 3 from the start; epoch 2 moves p % 4 == 1
    // from A to B.
    let mut world = World::new(P).await;
    let (a, b) = world.two_nodes(|p| usize::from(p % 4 == 3)).await;
    let partition = |u: &str| rtc_core::partition_for_key(u.as_bytes(), P);
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let (moving, rest): (Vec<&String>, Vec<&String>) = users.iter().partition(|u| partition(u) % 4 == 1);
    let staying: Vec<&String> = rest.into_iter().filter(|u| partition(u) % 4 == 3).collect();
    assert!(moving.len() >= 3 && staying.len() >= 2, "{} moving, {} staying", moving.len(), staying.len());
    let (newcomer, moving) = moving.split_last().unwrap();
    let mut on_a = Vec::new();
    for u in moving {
        on_a.push(Client::join(&a, &world.token(u, &a, 1)).await);
    }
    for u in &staying {
        Client::join(&b, &world.token(u, &b, 1)).await;
    }

    let resume = serde_json::json!({"type": "resume", "last_id": null});
    world.publish(2, &[&a, &b], |p| usize::from(p % 4 == 1 || p % 4 == 3)).await;
    for (u, client) in moving.iter().zip(&mut on_a) {
        let disconnect = client.next_json().await.expect("disconnect");
        assert_eq!(disconnect["reason"], "rebalance", "{u}: {disconnect}");
        Client::join(&b, &world.token(u, &b, 2)).await.send_json(resume.clone()).await;
    }
    // Not hand-off reconnects: a moved user back a second time, users of
    // B's own partitions reconnecting, and a new user (no `resume`).
    Client::join(&b, &world.token(moving[0], &b, 2)).await.send_json(resume.clone()).await;
    for u in &staying {
        Client::join(&b, &world.token(u, &b, 2)).await.send_json(resume.clone()).await;
    }
    let _newcomer = Client::join(&b, &world.token(newcomer, &b, 2)).await;

    let moved = moving.len() as f64;
    eventually("every moved user measured", Duration::from_secs(5), async || {
        metric(&b, "rtc_socket_reconnect_seconds_count").await >= moved
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&b, "rtc_socket_reconnect_seconds_count").await, moved, "each moved user once");
    let sum = metric(&b, "rtc_socket_reconnect_seconds_sum").await;
    assert!(sum > 0.0 && sum / moved < 5.0, "mean reconnect {} s", sum / moved);
    assert_eq!(metric(&b, "rtc_socket_reconnect_seconds_bucket{le=\"10\"}").await, moved);
    assert_eq!(metric(&a, "rtc_socket_reconnect_seconds_count").await, 0.0, "A gained nothing");
    a.shutdown().await;
    b.shutdown().await;
}

/// What one user of [`a_paced_hand_off_keeps_its_users_live_on_both_nodes`]
/// saw: the bodies received on A before its disconnect, when that came,
/// and the bodies on B after resuming there.
struct MovedUser {
    on_a: Vec<String>,
    told_at: tokio::time::Instant,
    on_b: Vec<String>,
}

/// Reads A until told to move, then resumes on B after the last id and
/// reads until `want` bodies arrived in all.
async fn follow_the_move(
    mut on_a: Client,
    resume_on_b: impl AsyncFnOnce(String) -> (Client, Vec<Value>),
    want: usize,
) -> MovedUser {
    let (mut bodies, mut last_id) = (Vec::new(), String::new());
    let told_at = loop {
        let frame = on_a.next_json_within(Duration::from_secs(20)).await.expect("a frame on A");
        match frame["type"].as_str() {
            Some("message") => {
                last_id = frame["id"].as_str().unwrap().to_owned();
                bodies.push(frame["body"].as_str().unwrap().to_owned());
            }
            Some("disconnect") => break tokio::time::Instant::now(),
            _ => {}
        }
    };
    drop(on_a);
    let (mut client, replayed) = resume_on_b(last_id).await;
    let mut on_b: Vec<String> = replayed.iter().map(|m| m["body"].as_str().unwrap().to_owned()).collect();
    while bodies.len() + on_b.len() < want {
        let Some(frame) = client.next_json_within(Duration::from_secs(10)).await else { break };
        if frame["type"] == "message" {
            on_b.push(frame["body"].as_str().unwrap().to_owned());
        }
    }
    MovedUser { on_a: bodies, told_at, on_b }
}

/// Every partition moves from A to B at once, as in a scale-in. A tells
/// its users to move at `RTC_HANDOFF_RATE` across the node (not per
/// partition, which let them all go in the same instant), acknowledges the
/// epoch at once, and keeps delivering live to the users whose turn has
/// not come; B serves those who arrived meanwhile. Nothing is lost or
/// doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_hand_off_keeps_its_users_live_on_both_nodes() {
    const P: u32 = 8;
    const USERS: usize = 20;
    let mut world = World::new(P).await;
    let a = world.node("socket-a", &["--handoff-rate", "10", "--retry-jitter-ms", "0"]).await;
    let b = world.node("socket-b", &[]).await;
    world.publish(1, &[&a, &b], |_| 0).await;
    wait_serving(&a, 1).await;
    wait_serving(&b, 1).await;

    let producer = world.producer().await;
    let users: Vec<String> = (0..USERS).map(|i| format!("paced-{i}")).collect();
    let mut followers = tokio::task::JoinSet::new();
    for user in &users {
        let client = Client::join(&a, &world.token(user, &a, 1)).await;
        let b_token = world.token(user, &b, 2);
        let (b_addr, user) = (b.ws_addr, user.clone());
        followers.spawn(async move {
            let resume = async move |last_id: String| {
                let (client, replayed, resumed) = Client::resume_at(b_addr, &b_token, &last_id).await;
                assert_eq!(resumed["recovered"], true, "{resumed}");
                (client, replayed)
            };
            (user, follow_the_move(client, resume, 2).await)
        });
    }
    for user in &users {
        world.produce(&producer, user, "before").await;
    }
    eventually("A delivered the first messages", Duration::from_secs(10), async || {
        metric(&a, "rtc_socket_messages_delivered_total").await >= USERS as f64
    })
    .await;

    let moved_at = tokio::time::Instant::now();
    world.publish(2, &[&a, &b], |_| 1).await;
    wait_acked(&a, 2).await;
    // 20 users at 10/s take about 2 s: A acknowledged long before its
    // last user was told.
    let still_on_a = a.hub.connections();
    assert!(still_on_a >= USERS as u64 / 2, "acknowledged with {still_on_a} of {USERS} users still on A");
    for user in &users {
        world.produce(&producer, user, "after").await;
    }

    let mut seen = Vec::new();
    while let Some(done) = followers.join_next().await {
        seen.push(done.unwrap());
    }
    let mut live_on_a = 0;
    for (user, moved) in &seen {
        let mut all = moved.on_a.clone();
        all.extend(moved.on_b.iter().cloned());
        assert_eq!(all, ["before", "after"], "{user}: once each, in order");
        live_on_a += usize::from(moved.on_a.len() == 2);
    }
    assert!(live_on_a >= USERS / 4, "{live_on_a} users got the later message live on A before their turn");
    let told: Vec<Duration> = seen.iter().map(|(_, m)| m.told_at - moved_at).collect();
    let spread = *told.iter().max().unwrap() - *told.iter().min().unwrap();
    assert!(spread >= Duration::from_millis(1500), "19 turns at 10/s, not at once: {spread:?}");
    eventually("every user left A", Duration::from_secs(5), async || a.hub.connections() == 0).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A user who received nothing for a while is moved. A flushes the session
/// and says how far it got (`disconnect{through}`: every record below it was
/// sent first); the client resumes from there, and B replays nothing and
/// reads no log for it. Resuming after the last id, as before, makes B scan
/// every record of the partition since the user's last message. Nothing is
/// lost or doubled either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_client_resumes_from_how_far_the_old_node_got() {
    const OTHERS: i64 = 300;
    let mut world = World::new(1).await;
    let a = world.node("socket-a", &["--retry-jitter-ms", "0"]).await;
    let b = world.node("socket-b", &[]).await;
    world.publish(1, &[&a, &b], |_| 0).await;
    wait_serving(&a, 1).await;
    wait_serving(&b, 1).await;

    let producer = world.producer().await;
    let mut cursor = Cursor::default();
    let mut on_a = Client::join(&a, &world.token("quiet", &a, 1)).await;
    let (_, early) = world.produce(&producer, "quiet", "early").await;
    let first = on_a.next_json_within(Duration::from_secs(10)).await.expect("the first message, live on A");
    assert_eq!(first["body"], "early", "{first}");
    assert!(cursor.accept(first["id"].as_str().unwrap().parse().unwrap()));
    for i in 0..OTHERS {
        world.produce(&producer, &format!("busy-{i}"), "x").await;
    }
    eventually("A consumed every record", Duration::from_secs(10), async || {
        metric(&a, "rtc_socket_messages_consumed_total").await >= (OTHERS + 1) as f64
    })
    .await;

    world.publish(2, &[&a, &b], |_| 1).await;
    let mut on_a_bodies = vec!["early".to_owned()];
    let through = loop {
        let frame = on_a.next_json_within(Duration::from_secs(10)).await.expect("a frame on A");
        match frame["type"].as_str() {
            Some("message") => {
                assert!(cursor.accept(frame["id"].as_str().unwrap().parse().unwrap()));
                on_a_bodies.push(frame["body"].as_str().unwrap().to_owned());
            }
            Some("disconnect") => break frame["through"].as_str().map(|id| id.parse::<MessageId>().unwrap()),
            _ => {}
        }
    };
    drop(on_a);
    assert_eq!(on_a_bodies, ["early"], "nothing else for this user");
    assert_eq!(through, Some(MessageId::new(0, early + 1 + OTHERS)), "A had dispatched every record");
    cursor.disconnected(through);
    assert_eq!(cursor.query(), format!("&from_id=0:{}", early + 1 + OTHERS), "not after 0:{early}");

    let url = format!("ws://{}/ws?token={}{}", b.ws_addr, world.token("quiet", &b, 2), cursor.query());
    let mut on_b = Client::connect_url(&url).await.expect("admitted by B");
    assert_eq!(on_b.next_json().await.expect("welcome")["type"], "welcome");
    let resumed = on_b.next_json().await.expect("resumed");
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!((resumed["recovered"].clone(), resumed["replayed"].clone()), (true.into(), 0.into()), "{resumed}");
    assert_eq!(metric(&b, "rtc_socket_catchup_scanned_total").await, 0.0, "B read no log for the resume");
    world.produce(&producer, "quiet", "after").await;
    let after = on_b.next_json_within(Duration::from_secs(10)).await.expect("the later message on B");
    assert_eq!(after["body"], "after", "{after}");
    assert!(cursor.accept(after["id"].as_str().unwrap().parse().unwrap()));
    a.shutdown().await;
    b.shutdown().await;
}
