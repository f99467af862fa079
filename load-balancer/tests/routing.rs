//! The service end to end on a real Redis: fake socket nodes write
//! heartbeats straight to the stream; two or three load balancers elect a
//! leader, publish the assignment and route.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_the_fleet_and_survives_failover() {
    let prefix = prefix();
    let unlimited = ["--rate-limit", "1000000", "--rate-burst", "1000000"];
    let a = lb(&prefix, "lb-a", &unlimited).await;
    let b = lb(&prefix, "lb-b", &unlimited).await;
    // No node yet: 503, as JSON. Bad user ids: 400.
    let (status, body) = get(a.addr, "/v1/route?user=u1", &[]).await;
    assert_eq!((status, body["error"].is_string()), (503, true), "{body}");
    for bad in ["/v1/route?user=", "/v1/route", &format!("/v1/route?user={}", "x".repeat(129)), "/v1/route?user=a%0Ab"]
    {
        assert_eq!(get(a.addr, bad, &[]).await.0, 400, "{bad}");
    }

    let stop = CancellationToken::new();
    beat(&prefix, &["socket-0", "socket-1", "socket-2"], stop.clone());
    let users: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    until("both replicas route", Duration::from_secs(5), async || {
        get(a.addr, "/v1/route?user=u1", &[]).await.0 == 200 && get(b.addr, "/v1/route?user=u1", &[]).await.0 == 200
    })
    .await;
    let before = routes(&a, &users).await;
    assert_eq!(before, routes(&b, &users).await, "followers serve the leader's assignment");
    let a1: Value = get(a.admin_addr, "/v1/assignment", &[]).await.1;
    let mut per_node = BTreeMap::new();
    for o in a1["owners"].as_array().unwrap() {
        *per_node.entry(o.as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![4, 4, 4], "balanced");

    // A node joins: only 3 partitions move (12/4 each), all to it.
    let stop_new = CancellationToken::new();
    beat(&prefix, &["socket-3"], stop_new.clone());
    let epoch1 = a1["epoch"].as_u64().unwrap();
    until("the join is published", Duration::from_secs(5), async || {
        get(a.admin_addr, "/v1/assignment", &[]).await.1["epoch"].as_u64() > Some(epoch1)
    })
    .await;
    let a2: Value = get(a.admin_addr, "/v1/assignment", &[]).await.1;
    let owner_id = |a: &Value, p: usize| a["nodes"][a["owners"][p].as_u64().unwrap() as usize]["id"].clone();
    let moved: Vec<usize> = (0..P as usize).filter(|p| owner_id(&a1, *p) != owner_id(&a2, *p)).collect();
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(moved.iter().all(|p| owner_id(&a2, *p) == "socket-3"));

    // It leaves again (dies): its partitions go back.
    stop_new.cancel();
    let epoch2 = a2["epoch"].as_u64().unwrap();
    until("the death is published", Duration::from_secs(5), async || {
        get(a.admin_addr, "/v1/assignment", &[]).await.1["epoch"].as_u64() > Some(epoch2)
    })
    .await;
    let settled = routes(&a, &users).await;

    // Kill the leader: another leads within TTL + 1 s and routes stay put.
    let c = lb(&prefix, "lb-c", &unlimited).await;
    let mut lbs = vec![a, b, c];
    until("a leader", Duration::from_secs(3), async || leader(&lbs).len() == 1).await;
    let old = leader(&lbs)[0];
    let killed_at = tokio::time::Instant::now();
    lbs.remove(old).kill();
    until("failover", Duration::from_millis(600 + 1000), async || leader(&lbs).len() == 1).await;
    assert!(killed_at.elapsed() <= Duration::from_millis(1600));
    let new_leader = leader(&lbs)[0];
    // The new leader republishes nothing while the fleet is unchanged.
    let after: BTreeMap<String, String> =
        routes(&lbs[new_leader], &users).await.into_iter().map(|(u, (n, _))| (u, n)).collect();
    let settled: BTreeMap<String, String> = settled.into_iter().map(|(u, (n, _))| (u, n)).collect();
    assert_eq!(after, settled, "routes unchanged across the failover");
    let (_, metrics) = get_text(lbs[new_leader].admin_addr, "/metrics", &[]).await;
    assert!(metrics.contains("rtc_lb_is_leader 1"), "{metrics}");
    stop.cancel();
    for l in lbs {
        l.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_silent_node_are_told_when_its_partitions_move() {
    let prefix = prefix();
    let a = lb(&prefix, "lb-a", &["--rate-limit", "1000000", "--rate-burst", "1000000"]).await;
    let stop = CancellationToken::new();
    beat(&prefix, &["socket-0", "socket-1"], stop.clone());
    let stop_silent = CancellationToken::new();
    beat(&prefix, &["socket-2"], stop_silent.clone());
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    until("all three own partitions", Duration::from_secs(5), async || {
        get(a.admin_addr, "/v1/assignment", &[]).await.1["nodes"].as_array().is_some_and(|n| n.len() == 3)
    })
    .await;
    let mut on_silent = None;
    until("socket-2 owns a user", Duration::from_secs(5), async || {
        on_silent = routes(&a, &users).await.into_iter().find(|(_, (node, _))| node == "socket-2").map(|(u, _)| u);
        on_silent.is_some()
    })
    .await;
    let user = on_silent.unwrap();
    let path = format!("/v1/route?user={user}");

    // socket-2 stops beating (it died). After two heartbeat intervals its
    // users get 503 and when to come back: when the leader moves its
    // partitions (TestLb: 100 ms heartbeats, reassigned 1 625 ms after
    // the last one), not a backoff later.
    stop_silent.cancel();
    let silenced = tokio::time::Instant::now();
    let mut told = None;
    until("the route says the owner is silent", Duration::from_secs(2), async || {
        let (status, body) = get(a.addr, &path, &[]).await;
        told = (status == 503).then_some(body);
        told.is_some()
    })
    .await;
    let told = told.unwrap();
    let wait = told["retry_after_ms"].as_u64().unwrap();
    assert!((100..=1_625 + 200).contains(&wait), "{told}");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    until("routed to a live node", Duration::from_millis(500), async || {
        let (status, body) = get(a.addr, &path, &[]).await;
        status == 200 && body["node_id"] != "socket-2"
    })
    .await;
    assert!(silenced.elapsed() < Duration::from_secs(3));
    let (_, metrics) = get_text(a.admin_addr, "/metrics", &[]).await;
    assert!(metrics.contains(r#"rtc_lb_route_requests_total{outcome="owner_silent"}"#), "{metrics}");
    stop.cancel();
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_binds_the_route_to_the_subject() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let prefix = prefix();
    let lb = lb(&prefix, "lb-j", &["--auth", "jwt", "--jwt-secret", "s3cret"]).await;
    let stop = CancellationToken::new();
    beat(&prefix, &["socket-0"], stop.clone());
    let token = |secret: &[u8], sub: &str| {
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            exp: u64,
        }
        let t = encode(&Header::default(), &C { sub, exp: 4_000_000_000 }, &EncodingKey::from_secret(secret)).unwrap();
        format!("Bearer {t}")
    };
    let alice = token(b"s3cret", "alice");
    until("routing", Duration::from_secs(5), async || {
        get(lb.addr, "/v1/route?user=alice", &[("authorization", &alice)]).await.0 == 200
    })
    .await;
    let (status, body) = get(lb.addr, "/v1/route", &[("authorization", &alice)]).await;
    assert_eq!((status, body["user"].as_str()), (200, Some("alice")), "the subject is the user");
    assert_eq!(get(lb.addr, "/v1/route?user=alice", &[]).await.0, 401);
    assert_eq!(get(lb.addr, "/v1/route?user=bob", &[("authorization", &alice)]).await.0, 401);
    let forged = token(b"guess", "alice");
    let (status, body) = get(lb.addr, "/v1/route?user=alice", &[("authorization", &forged)]).await;
    assert_eq!((status, body["error"].is_string()), (401, true));
    stop.cancel();
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_is_rate_limited() {
    let prefix = prefix();
    let lb = lb(&prefix, "lb-r", &["--rate-limit", "1", "--rate-burst", "5"]).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(lb.addr, "/v1/route?user=u1", &[]).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3, "{statuses:?}");
    lb.shutdown().await;
}

/// Behind an ingress every request comes from the ingress's address: with
/// it trusted, each client (its `X-Forwarded-For`) has its own bucket; a
/// header from an untrusted peer is ignored, so forging it gains nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_rate_limit_is_per_client_behind_a_trusted_proxy() {
    let prefix = prefix();
    let stop = CancellationToken::new();
    beat(&prefix, &["socket-0"], stop.clone());
    let limited = ["--rate-limit", "1", "--rate-burst", "2"];
    let behind_ingress = lb(&prefix, "lb-a", &[&limited[..], &["--trusted-proxies", "127.0.0.0/8"]].concat()).await;
    let direct = lb(&prefix, "lb-b", &limited).await;
    let status = async |lb: &rtc_load_balancer::service::LbHandle, client: &str| {
        get(lb.addr, "/v1/route?user=u1", &[("x-forwarded-for", client)]).await.0
    };
    for (n, lb) in [&behind_ingress, &direct].into_iter().enumerate() {
        let warm = format!("198.51.100.{n}");
        until("it routes", Duration::from_secs(10), async || status(lb, &warm).await == 200).await;
    }
    let statuses = [status(&behind_ingress, "203.0.113.1").await, status(&behind_ingress, "203.0.113.1").await];
    assert_eq!(statuses, [200, 200]);
    assert_eq!(status(&behind_ingress, "203.0.113.1").await, 429, "that client's burst is spent");
    assert_eq!(status(&behind_ingress, "203.0.113.2").await, 200, "another client has its own bucket");
    // Not trusted: every request is the peer's, whatever it claims.
    let forged: Vec<u16> = [status(&direct, "203.0.113.3").await, status(&direct, "203.0.113.4").await].into();
    assert!(forged.contains(&429), "{forged:?}");
    stop.cancel();
    behind_ingress.shutdown().await;
    direct.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pages_of_the_configured_origins_may_route() {
    let prefix = prefix();
    let app = "https://chat.example.com";
    let a = lb(&prefix, "lb-a", &["--cors-origins", &format!("{app},http://localhost:5173")]).await;
    let stop = CancellationToken::new();
    beat(&prefix, &["socket-0"], stop.clone());
    until("routes", Duration::from_secs(5), async || get(a.addr, "/v1/route?user=u1", &[]).await.0 == 200).await;

    // The preflight a page sends before a GET with an Authorization header.
    let preflight = [
        ("origin", app),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ];
    let (status, headers, _) = exchange(a.addr, "OPTIONS", "/v1/route?user=u1", &preflight).await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(headers.get("access-control-allow-origin").map(String::as_str), Some(app), "{headers:?}");
    assert!(headers.get("access-control-allow-headers").is_some_and(|h| h.contains("authorization")), "{headers:?}");
    assert!(headers.get("access-control-allow-methods").is_some_and(|h| h.contains("GET")), "{headers:?}");
    assert_eq!(headers.get("access-control-max-age").map(String::as_str), Some("600"));

    // The GET itself carries the origin back; another origin gets nothing.
    let (status, headers, _) = exchange(a.addr, "GET", "/v1/route?user=u1", &[("origin", app)]).await;
    assert_eq!((status, headers.get("access-control-allow-origin").map(String::as_str)), (200, Some(app)));
    let evil = [("origin", "https://evil.example"), ("access-control-request-method", "GET")];
    let (_, headers, _) = exchange(a.addr, "OPTIONS", "/v1/route?user=u1", &evil).await;
    assert_eq!(headers.get("access-control-allow-origin"), None, "{headers:?}");
    let (_, headers, _) = exchange(a.addr, "GET", "/v1/route?user=u1", &[("origin", "https://evil.example")]).await;
    assert_eq!(headers.get("access-control-allow-origin"), None, "{headers:?}");

    // Without the setting (the default) no CORS header is ever sent.
    let b = lb(&prefix, "lb-b", &[]).await;
    until("b routes", Duration::from_secs(5), async || get(b.addr, "/v1/route?user=u1", &[]).await.0 == 200).await;
    let (_, headers, _) = exchange(b.addr, "GET", "/v1/route?user=u1", &[("origin", app)]).await;
    assert_eq!(headers.get("access-control-allow-origin"), None, "{headers:?}");
    stop.cancel();
    a.shutdown().await;
    b.shutdown().await;
}
