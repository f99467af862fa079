//! Faults from outside the node, on a real broker (tansu): a client
//! black-holed by a TCP proxy, a node SIGKILLed, a user offline across two
//! hand-offs, connects racing a partition move. In each, resuming from the
//! last id the client processed recovers every message, in order: the
//! Kafka log is the history.

use std::time::Duration;

use rtc_core::protocol::MessageId;
use rtc_socket::server::NodeHandle;
use rtc_testkit::{FaultProxy, ProxyMode};

use crate::support::*;

const P: u32 = 4;

/// Produces `n` messages to `user` and returns their ids in order.
async fn produce_n(world: &World, user: &str, n: usize, tag: &str) -> Vec<String> {
    let producer = world.producer().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let (p, o) = world.produce(&producer, user, &format!("{tag}-{i}")).await;
        ids.push(format!("{p}:{o}"));
    }
    ids
}

/// Reads `n` messages and returns the id of the last.
async fn read_n(client: &mut Client, n: usize) -> String {
    let mut last = String::new();
    for _ in 0..n {
        let m = client.next_json().await.expect("a message");
        assert_eq!(m["type"], "message", "{m}");
        last = m["id"].as_str().unwrap().to_owned();
    }
    last
}

fn ids_of(frames: &[serde_json::Value]) -> Vec<String> {
    frames.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}

/// Ids strictly increase: what a client deduping by one comparison keeps.
fn assert_in_order(ids: &[String]) {
    let parsed: Vec<MessageId> = ids.iter().map(|i| i.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "not in strictly increasing order: {ids:?}");
}

async fn move_all(world: &mut World, epoch: u64, nodes: &[&NodeHandle], to: usize) {
    world.publish(epoch, nodes, |_| to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_client_gets_everything_after_its_node_hands_off() {
    let mut world = World::tansu(P).await;
    let (a, b) = world.two_nodes(|_| 0).await;
    let proxy = FaultProxy::start(a.ws_addr).await.unwrap();
    let url = format!("ws://{}/ws?token={}", proxy.addr(), world.token("hana", &a, 1));
    let mut client = Client::connect_url(&url).await.expect("admitted");
    assert_eq!(client.next_json().await.unwrap()["type"], "welcome");
    produce_n(&world, "hana", 3, "seen").await;
    let last_seen = read_n(&mut client, 3).await;

    // The network drops everything; A goes on writing into the void.
    proxy.set_mode(ProxyMode::BlackHole);
    let lost_in_transit = produce_n(&world, "hana", 20, "void").await;
    eventually("A wrote them all", Duration::from_secs(10), async || {
        metric(&a, "rtc_socket_messages_delivered_total").await >= 23.0
    })
    .await;
    // A hands the partition to B; its disconnect is lost too.
    move_all(&mut world, 2, &[&a, &b], 1).await;
    wait_acked(&a, 2).await;
    wait_serving(&b, 2).await;
    let after_move = produce_n(&world, "hana", 5, "later").await;

    // The client notices its connection is dead and resumes on B.
    proxy.cut();
    while client.next_json_within(Duration::from_secs(2)).await.is_some() {}
    let (_client, replayed, resumed) = Client::resume(&b, &world.token("hana", &b, 2), &last_seen).await;
    let got = ids_of(&replayed);
    let mut want = lost_in_transit;
    want.extend(after_move);
    assert_eq!(got, want, "every message after {last_seen}, in order");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_sigkilled_node_resume_on_the_new_owner_and_lose_nothing() {
    let mut world = World::tansu(P).await;
    let (mut child, url) = spawn_binary(&world, "socket-k", &[]).await;
    let b = world.node("socket-b", &[]).await;
    let killed = ("socket-k".to_owned(), url.clone());
    let nodes = vec![killed.clone(), (b.node_id.clone(), b.advertised_url.clone())];
    world.publish_nodes(1, nodes, |_| 0).await;
    wait_serving(&b, 1).await;

    let target: std::net::SocketAddr = url.trim_start_matches("ws://").trim_end_matches("/ws").parse().unwrap();
    let proxy = FaultProxy::start(target).await.unwrap();
    let token = token_for("ivan", "socket-k", rtc_core::partition_for_key(b"ivan", P), 1);
    let mut client = loop {
        // Admitted once the child applied the assignment.
        if let Ok(c) = Client::connect_url(&format!("ws://{}/ws?token={token}", proxy.addr())).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(client.next_json().await.unwrap()["type"], "welcome");
    produce_n(&world, "ivan", 3, "seen").await;
    let last_seen = read_n(&mut client, 3).await;
    // Consumed and written into a dead connection, then the node dies.
    proxy.set_mode(ProxyMode::BlackHole);
    let unseen = produce_n(&world, "ivan", 20, "unseen").await;
    // Long enough for the node to consume and commit them (100 ms interval).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&child, "KILL");
    let _ = child.wait().await;

    // The leader gives everything to B once the node is dead.
    let nodes = vec![(b.node_id.clone(), b.advertised_url.clone())];
    world.publish_nodes(2, nodes, |_| 0).await;
    wait_serving(&b, 2).await;
    proxy.cut();
    let (_client, replayed, resumed) = Client::resume(&b, &world.token("ivan", &b, 2), &last_seen).await;
    assert_eq!(ids_of(&replayed), unseen, "every message after {last_seen}, in order");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_offline_for_30_s_across_two_hand_offs_recovers_everything() {
    let mut world = World::tansu(P).await;
    let (a, b) = world.two_nodes(|_| 0).await;
    let mut client = Client::join(&a, &world.token("jade", &a, 1)).await;
    produce_n(&world, "jade", 2, "seen").await;
    let last_seen = read_n(&mut client, 2).await;
    drop(client);

    // Offline: messages arrive on A, then A hands off to B after 15 s (past
    // any hold an older design kept), more arrive on B, and B hands back to
    // A 15 s later.
    let mut missed = produce_n(&world, "jade", 5, "on-a").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    move_all(&mut world, 2, &[&a, &b], 1).await;
    wait_acked(&a, 2).await;
    wait_serving(&b, 2).await;
    missed.extend(produce_n(&world, "jade", 5, "on-b").await);
    tokio::time::sleep(Duration::from_secs(15)).await;
    move_all(&mut world, 3, &[&a, &b], 0).await;
    wait_acked(&b, 3).await;
    wait_serving(&a, 3).await;

    let (_client, replayed, resumed) = Client::resume(&a, &world.token("jade", &a, 3), &last_seen).await;
    assert_eq!(ids_of(&replayed), missed, "every message after {last_seen}, in order");
    assert_in_order(&ids_of(&replayed));
    assert_eq!(resumed["recovered"], true, "{resumed}");
    a.shutdown().await;
    b.shutdown().await;
}

/// One round: 200 users of the moving partitions connect to A while the
/// partitions move to B. Once A acknowledged the move and its users moved
/// out, none of them is left on A.
async fn connects_race_a_move(world: &mut World, a: &NodeHandle, b: &NodeHandle, epoch: u64) {
    let users: Vec<String> = (0..200).map(|i| format!("racer-{epoch}-{i}")).collect();
    let mut connects = tokio::task::JoinSet::new();
    for u in &users {
        let url = format!("ws://{}/ws?token={}", a.ws_addr, world.token(u, a, epoch));
        connects.spawn(async move {
            // Hold the session until the server closes it (or 10 s).
            if let Ok(mut c) = Client::connect_url(&url).await {
                while c.next_json_within(Duration::from_secs(10)).await.is_some() {}
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(rand_ms(epoch))).await;
    move_all(world, epoch + 1, &[a, b], 1).await;
    wait_acked(a, epoch + 1).await;
    // Its users move out on the node's schedule after the acknowledgement.
    let left = async || a.hub.connections() == 0;
    eventually(&format!("round {epoch}: no session stays on the old owner"), Duration::from_secs(5), left).await;
    tokio::time::timeout(Duration::from_secs(20), async { while connects.join_next().await.is_some() {} })
        .await
        .expect("every client saw its session end");
    // Back to A for the next round.
    move_all(world, epoch + 2, &[a, b], 0).await;
    wait_acked(b, epoch + 2).await;
    wait_serving(a, epoch + 2).await;
}

/// A spread of start delays across rounds, without a random source.
fn rand_ms(round: u64) -> u64 {
    (round * 37) % 40
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_racing_a_partition_move_leave_no_session_on_the_old_owner() {
    let mut world = World::new(P).await;
    let a = world.node("socket-a", &["--handoff-rate", "100000"]).await;
    let b = world.node("socket-b", &[]).await;
    move_all(&mut world, 1, &[&a, &b], 0).await;
    wait_serving(&a, 1).await;
    wait_serving(&b, 1).await;
    for round in 0..5 {
        connects_race_a_move(&mut world, &a, &b, 1 + 2 * round).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Milliseconds since `node`'s newest heartbeat entry, by Redis's clock:
/// what the leader judges a node's liveness by.
async fn silent_for_ms(world: &World, node: &str) -> u64 {
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let key = rtc_core::Keys::new(world.prefix.clone()).heartbeats();
    let mut conn = world.redis.clone();
    let newest: Vec<Entry> =
        redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(500).query_async(&mut conn).await.unwrap();
    let last_ms = newest
        .iter()
        .find(|(_, fields)| {
            fields.iter().any(|(k, v)| {
                k == "hb"
                    && <rtc_core::Heartbeat as rtc_core::Document>::from_json(v).is_ok_and(|hb| hb.node_id == node)
            })
        })
        .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    (secs * 1000 + micros / 1000).saturating_sub(last_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_lets_go_before_its_partitions_can_move() {
    let mut world = World::tansu(P).await;
    let redis_addr: std::net::SocketAddr = redis_url().trim_start_matches("redis://").parse().unwrap();
    let proxy = FaultProxy::start(redis_addr).await.unwrap();
    let a = world.node("socket-a", &["--redis-url", &format!("redis://{}", proxy.addr())]).await;
    let b = world.node("socket-b", &[]).await;
    world.publish(1, &[&a, &b], |_| 0).await;
    wait_serving(&a, 1).await;
    wait_serving(&b, 1).await;
    let mut client = Client::join(&a, &world.token("iris", &a, 1)).await;
    produce_n(&world, "iris", 3, "before").await;
    let mut last_seen = read_n(&mut client, 3).await;

    // A loses Redis, not Kafka nor its users: it could go on consuming.
    proxy.set_mode(ProxyMode::Partition);
    let mut sent = produce_n(&world, "iris", 5, "cut").await;
    // The leader's rule (TestLb's flags): a node's partitions move only once
    // its newest heartbeat is dead-after + margin old (1 500 + 125 ms).
    eventually("A looks dead to the leader", Duration::from_secs(10), async || {
        silent_for_ms(&world, "socket-a").await >= 1625
    })
    .await;
    // By then A has let go of everything and told its user to come back
    // once the partition has moved.
    assert!(a.ownership.view().accepting.is_empty(), "A still serves partitions the leader may now move");
    assert_eq!(metric(&a, "rtc_socket_fenced").await, 1.0, "A fenced itself");
    let bye = loop {
        let frame = client.next_json_within(Duration::from_secs(1)).await.expect("a disconnect");
        match frame["type"].as_str() {
            Some("message") => last_seen = frame["id"].as_str().unwrap().to_owned(),
            _ => break frame,
        }
    };
    assert_eq!((bye["type"].as_str(), bye["reason"].as_str()), (Some("disconnect"), Some("rebalance")), "{bye}");
    assert!(bye["retry_after_ms"].as_u64().unwrap() >= 250, "retry once the partition moved: {bye}");
    let delivered_by_a = metric(&a, "rtc_socket_messages_delivered_total").await;

    // The leader moves everything to B; the user resumes there.
    world.publish(2, &[&a, &b], |_| 1).await;
    wait_serving(&b, 2).await;
    sent.extend(produce_n(&world, "iris", 5, "moved").await);
    let (mut on_b, replayed, resumed) = Client::resume(&b, &world.token("iris", &b, 2), &last_seen).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let mut got = ids_of(&replayed);
    let want: Vec<String> =
        sent.iter().filter(|id| id.parse::<MessageId>().unwrap() > last_seen.parse().unwrap()).cloned().collect();
    while got.len() < want.len() {
        let m = on_b.next_json().await.expect("the rest, live");
        got.push(m["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, want, "every message after {last_seen}, in order");
    assert_eq!(metric(&a, "rtc_socket_messages_delivered_total").await, delivered_by_a, "A consumed nothing more");

    // Redis is back: A's lease is renewed and it serves again when given
    // partitions.
    proxy.set_mode(ProxyMode::Pass);
    eventually("A is no longer fenced", Duration::from_secs(10), async || metric(&a, "rtc_socket_fenced").await == 0.0)
        .await;
    world.publish(3, &[&a, &b], |_| 0).await;
    wait_serving(&a, 3).await;
    let ownership = a.ownership.clone();
    eventually("A serves again", Duration::from_secs(10), async || !ownership.view().accepting.is_empty()).await;
    assert_eq!(metric(&a, "rtc_socket_fences_total").await, 1.0);
    a.shutdown().await;
    b.shutdown().await;
}
