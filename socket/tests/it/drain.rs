//! Draining: not ready but live, `draining` in heartbeats, sessions told to
//! go within the window, then drained.

use std::time::Duration;

use rtc_core::NodeState;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_empties_the_node_within_its_window() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--drain-window-ms", "600"]).await;
    assert_eq!(admin_get(&node, "/readyz").await.0, 200);
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(Client::join(&node, &world.token(&format!("u{i}"), &node, 1)).await);
    }

    // Changing what the node does takes the admin token, and a POST.
    assert_eq!(http(node.admin_addr, "POST", "/drain").await.0, 401);
    assert_eq!(http_with(node.admin_addr, "POST", "/drain", &[("authorization", "Bearer guess")]).await.0, 401);
    let bearer = format!("Bearer {}", rtc_socket::testing::TEST_ADMIN_TOKEN);
    assert_eq!(http_with(node.admin_addr, "GET", "/drain", &[("authorization", &bearer)]).await.0, 405);
    assert_eq!(admin_get(&node, "/readyz").await.0, 200, "nothing refused started a drain");
    assert_eq!(metric(&node, r#"rtc_socket_admin_refused_total{reason="bad_token"}"#).await, 2.0);
    // Without a token configured (an empty one counts as none), it is off.
    let closed = world.node("socket-closed", &["--admin-token", ""]).await;
    let (status, body) = http_with(closed.admin_addr, "POST", "/drain", &[("authorization", "Bearer ")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("RTC_ADMIN_TOKEN"), "{body}");
    closed.shutdown().await;

    let started = tokio::time::Instant::now();
    let (status, body) = http_with(node.admin_addr, "POST", "/drain", &[("authorization", &bearer)]).await;
    assert_eq!(status, 202);
    assert!(body.contains("\"started_now\":true"), "{body}");
    // Idempotent.
    let (status, body) = http_with(node.admin_addr, "POST", "/drain", &[("authorization", &bearer)]).await;
    assert_eq!(status, 202);
    assert!(body.contains("\"started_now\":false"), "{body}");
    assert_eq!(admin_get(&node, "/readyz").await.0, 503);
    assert_eq!(admin_get(&node, "/livez").await.0, 200);

    for client in &mut clients {
        let frame = client.next_json_within(Duration::from_secs(3)).await.expect("disconnect frame");
        assert_eq!(frame["type"], "disconnect");
        assert_eq!(frame["reason"], "drain");
        assert_eq!(frame["reconnect"], true);
    }
    eventually("drained", Duration::from_secs(3), async || node.lifecycle.drained()).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(600 + 1000), "drain took {took:?}");
    let (_, status) = admin_get(&node, "/drain/status").await;
    assert!(status.contains("\"drained\":true") && status.contains("\"connections\":0"), "{status}");
    assert_eq!(metric(&node, "rtc_socket_disconnects_total{reason=\"drain\"}").await, 20.0);
    assert_eq!(metric(&node, "rtc_socket_draining").await, 1.0);

    // The heartbeat stream says so.
    let states: Vec<NodeState> = heartbeats_of(&world, "socket-a").await.iter().map(|hb| hb.state).collect();
    assert_eq!(states.last(), Some(&NodeState::Draining), "{states:?}");
    node.shutdown().await;
}
