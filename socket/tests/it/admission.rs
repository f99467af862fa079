//! Who gets a session: the token must verify, name this node, and name a
//! partition served here at the current epoch.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_the_upgrade() {
    let mut world = World::new(8).await;
    let node = world.node("socket-a", &[]).await;
    // Serve partitions 0..4 only.
    world.publish(1, &[&node], |_| 0).await;
    wait_serving(&node, 1).await;
    let nodes = vec![
        ("socket-a".to_owned(), node.advertised_url.clone()),
        ("socket-b".to_owned(), "ws://127.0.0.1:1/ws".to_owned()),
    ];
    world.publish_nodes(2, nodes, |p| if p < 4 { 0 } else { 1 }).await;

    let user = (0..).map(|i| format!("user-{i}")).find(|u| rtc_core::partition_for_key(u.as_bytes(), 8) < 4).unwrap();
    let p = rtc_core::partition_for_key(user.as_bytes(), 8);
    let other = (0..).map(|i| format!("user-{i}")).find(|u| rtc_core::partition_for_key(u.as_bytes(), 8) >= 4).unwrap();
    let op = rtc_core::partition_for_key(other.as_bytes(), 8);
    wait_serving(&node, 2).await;

    let expired = rtc_core::TokenSigner::new(SECRET.as_bytes()).sign(&rtc_core::ConnectClaims {
        user: user.clone(),
        node_id: "socket-a".into(),
        partition: p,
        epoch: 2,
        expires_at_ms: 1,
        nonce: 0,
    });
    let foreign = rtc_core::TokenSigner::new(b"other").sign(&rtc_core::ConnectClaims {
        user: user.clone(),
        node_id: "socket-a".into(),
        partition: p,
        epoch: 2,
        expires_at_ms: u64::MAX,
        nonce: 0,
    });
    let cases = [
        ("garbage".to_owned(), 401, "bad_token"),
        (expired, 401, "bad_token"),
        (foreign, 401, "bad_token"),
        (token_for(&user, "socket-b", p, 2), 409, "wrong_node"),
        (token_for(&user, "socket-a", (p + 1) % 8, 2), 401, "bad_token"),
        (token_for(&other, "socket-a", op, 2), 409, "not_owner"),
    ];
    for (token, status, code) in cases {
        let (got_status, body) = Client::connect(&node, &token).await.err().expect("refused");
        assert_eq!((got_status, body["error"].as_str().unwrap()), (status, code), "{body}");
        assert_eq!(body["epoch"], json!(2));
    }
    assert_eq!(metric(&node, "rtc_socket_refused_total{reason=\"bad_token\"}").await, 4.0);
    assert_eq!(metric(&node, "rtc_socket_refused_total{reason=\"not_owner\"}").await, 1.0);

    // The right token is welcomed with this node's view.
    let mut client = Client::connect(&node, &world.token(&user, &node, 2)).await.expect("admitted");
    let welcome = client.next_json().await.unwrap();
    // Nothing was ever produced: the live start is offset 0.
    let live_from = format!("{p}:0");
    assert_eq!(
        welcome,
        json!({"type":"welcome","node_id":"socket-a","user":user,"partition":p,"epoch":2,"live_from":live_from})
    );
    assert_eq!(metric(&node, "rtc_socket_connections").await, 1.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_one_session_only() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &[]).await;
    let token = world.token("u1", &node, 1);
    let first = Client::join(&node, &token).await;
    // While the session lives, and after it ended, the same URL is refused.
    let (status, body) = Client::connect(&node, &token).await.err().expect("refused while live");
    assert_eq!((status, body["error"].as_str().unwrap()), (401, "token_reused"), "{body}");
    drop(first);
    eventually("the session ended", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_connections").await == 0.0
    })
    .await;
    let (status, body) = Client::connect(&node, &token).await.err().expect("refused after the session");
    assert_eq!((status, body["error"].as_str().unwrap()), (401, "token_reused"), "{body}");
    assert_eq!(metric(&node, r#"rtc_socket_refused_total{reason="token_reused"}"#).await, 2.0);
    // A fresh token for the same user is welcome.
    Client::join(&node, &world.token("u1", &node, 1)).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_newer_epoch_waits_for_the_node_to_catch_up() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--assignment-poll-ms", "60000"]).await;
    // Epoch 2 is written without the pub/sub announcement: only the token
    // tells the node it is behind.
    let keys = rtc_core::Keys::new(world.prefix.clone());
    let mut a: rtc_core::Assignment = {
        use redis::AsyncCommands;
        let raw: String = world.redis.get(keys.assignment()).await.unwrap();
        serde_json::from_str(&raw).unwrap()
    };
    a.epoch = 2;
    {
        use redis::AsyncCommands;
        let _: () = world.redis.set(keys.assignment(), rtc_core::Document::to_json(&a)).await.unwrap();
    }
    let mut client = Client::connect(&node, &world.token("u1", &node, 2)).await.expect("admitted after catching up");
    assert_eq!(client.next_json().await.unwrap()["epoch"], json!(2));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_draining_nodes_refuse() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--capacity", "1"]).await;
    let _first = Client::join(&node, &world.token("u1", &node, 1)).await;
    let (status, body) = Client::connect(&node, &world.token("u2", &node, 1)).await.err().unwrap();
    assert_eq!((status, body["error"].as_str().unwrap()), (503, "at_capacity"));
    node.lifecycle.begin_drain();
    let (status, body) = Client::connect(&node, &world.token("u2", &node, 1)).await.err().unwrap();
    assert_eq!((status, body["error"].as_str().unwrap()), (503, "draining"));
    node.shutdown().await;
}
