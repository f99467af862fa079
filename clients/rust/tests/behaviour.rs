//! The client against fake servers: load balancer failover and backoff,
//! refusals, terminal closes, `close()`, sends and their acks, a reader
//! that falls behind, a silent connection.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod fake;

use std::net::IpAddr;
use std::time::Duration;

use fake::*;
use rtc_client::{
    ClientConfig, ClientError, ConnectError, Event, MessageId, RouteError, RtcClient, SendError, SessionEnd, State,
};
use tokio::time::Instant;

fn config(route_urls: &[&str]) -> ClientConfig {
    let mut config = ClientConfig::new(route_urls.iter().copied(), "u1");
    config.min_reconnect_delay = ms(20);
    config.max_reconnect_delay = ms(200);
    config
}

fn route_error(event: &Event) -> Option<(&str, &RouteError)> {
    match event {
        Event::Error(ClientError::Route { url, error }) => Some((url.as_str(), error)),
        _ => None,
    }
}

#[tokio::test]
async fn an_unreachable_load_balancer_is_skipped_at_once_and_the_one_that_answered_is_kept() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let dead = dead_url();
    let mut config = config(&[&dead, &lb.url]);
    // A backoff before trying the second one would take 5 s.
    config.min_reconnect_delay = Duration::from_secs(5);
    let started = Instant::now();
    let (client, mut events) = RtcClient::connect(config).unwrap();
    let mut conn = node.next_conn().await;
    assert!(started.elapsed() < Duration::from_secs(2), "failover took {:?}", started.elapsed());
    conn.welcome("3:1").await;
    let before = wait_state(&mut events, State::Connected).await;
    let errors: Vec<_> = before.iter().filter_map(route_error).collect();
    assert_eq!(errors.len(), 1, "{before:?}");
    assert_eq!(errors[0].0, dead);
    assert!(matches!(errors[0].1, RouteError::Unreachable(_)), "{:?}", errors[0].1);

    // Told to move: the next route request goes to the load balancer that
    // answered last, with no detour through the dead one.
    conn.send(r#"{"type":"disconnect","reason":"rebalance","reconnect":true,"retry_after_ms":0}"#).await;
    let _gone = conn.close_with(4001);
    let mut again = node.next_conn().await;
    again.welcome("3:1").await;
    let between = wait_state(&mut events, State::Connected).await;
    assert!(between.iter().all(|e| route_error(e).is_none()), "{between:?}");
    assert_eq!(lb.hits().len(), 2);
    client.close();
}

#[tokio::test]
async fn when_every_load_balancer_fails_the_client_backs_off_between_rounds() {
    let (dead_a, dead_b) = (dead_url(), dead_url());
    let mut config = config(&[&dead_a, &dead_b]);
    // min = max: every delay is exactly 300 ms.
    config.min_reconnect_delay = ms(300);
    config.max_reconnect_delay = ms(300);
    let (client, mut events) = RtcClient::connect(config).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        if let Some((url, error)) = route_error(&next_event(&mut events).await) {
            assert!(matches!(error, RouteError::Unreachable(_)), "{error:?}");
            seen.push((url.to_owned(), Instant::now()));
        }
    }
    for round in seen.chunks(2) {
        assert_eq!((round[0].0.as_str(), round[1].0.as_str()), (dead_a.as_str(), dead_b.as_str()), "each in turn");
        assert!(round[1].1 - round[0].1 < ms(200), "no wait within a round: {:?}", round[1].1 - round[0].1);
    }
    for pair in seen.windows(2).skip(1).step_by(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(gap >= ms(290), "a round starts only after the backoff: {gap:?}");
    }
    assert_eq!(client.state(), State::Connecting);
    client.close();
    client.closed().await;
}

#[tokio::test]
async fn an_error_status_backs_off_at_least_its_retry_after() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    lb.answer_status(429, 1);
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let (_, first) = events_until(&mut events, |e| route_error(e).is_some()).await;
    assert!(
        matches!(route_error(&first), Some((_, RouteError::Status { status: 429, retry_after: Some(d), .. })) if *d == Duration::from_secs(1)),
        "{first:?}"
    );
    lb.answer_status(0, 0);
    let conn = node.next_conn().await;
    let hits = lb.hits();
    assert_eq!(hits.len(), 2);
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_secs(1), "asked again after {gap:?}, Retry-After was 1 s");
    drop(conn);
    client.close();
}

#[tokio::test]
async fn the_route_request_carries_the_user_the_auth_and_the_source_address() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let source: IpAddr = "127.0.0.2".parse().unwrap();
    let mut config = ClientConfig::new([format!("{}/", lb.url)], "a b&c=d+é");
    config.route_auth = Some("Bearer t0k".into());
    config.source_ip = Some(source);
    let (client, _events) = RtcClient::connect(config).unwrap();
    let conn = node.next_conn().await;
    let hit = lb.hits().remove(0);
    assert_eq!(hit.user.as_deref(), Some("a b&c=d+é"));
    assert_eq!(hit.authorization.as_deref(), Some("Bearer t0k"));
    assert_eq!(hit.peer.ip(), source, "route request from the source address");
    assert_eq!(conn.peer.ip(), source, "WebSocket from the source address");
    client.close();
}

#[tokio::test]
async fn a_refused_upgrade_asks_the_load_balancer_again() {
    let mut node = FakeNode::start_with(Admit::Refuse { status: 409, error: "not_owner", times: 2 }).await;
    let lb = FakeLb::start(&node.url).await;
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:1").await;
    let before = wait_state(&mut events, State::Connected).await;
    let refusals: Vec<_> = before
        .iter()
        .filter_map(|e| match e {
            Event::Error(ClientError::Connect { error: ConnectError::Refused { status, error, .. }, .. }) => {
                Some((*status, error.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(refusals, [(409, "not_owner"), (409, "not_owner")]);
    assert_eq!(lb.hits().len(), 3, "a new route for each attempt");
    client.close();
}

#[tokio::test]
async fn a_terminal_close_code_closes_the_client_for_good() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:1").await;
    wait_state(&mut events, State::Connected).await;
    let _gone = conn.close_with(4500);
    let (_, ended) = events_until(&mut events, |e| matches!(e, Event::SessionEnded { .. })).await;
    assert_eq!(
        ended,
        Event::SessionEnded { end: SessionEnd::Closed { code: 4500, reason: String::new() }, reconnect_in: None }
    );
    assert_eq!(next_event(&mut events).await, Event::State(State::Closed));
    assert_eq!(tokio::time::timeout(ms(500), events.recv()).await.unwrap(), None, "the events end");
    assert!(node.next_conn_within(ms(300)).await.is_none(), "no reconnect");
    assert_eq!(lb.hits().len(), 1);
    assert_eq!(client.state(), State::Closed);
    assert_eq!(client.send("u2", "x").await, Err(SendError::Closed));
}

#[tokio::test]
async fn close_ends_the_session_with_a_normal_close_and_no_reconnect() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:1").await;
    wait_state(&mut events, State::Connected).await;
    client.close();
    assert_eq!(conn.client_close_code().await, Some(1000));
    client.closed().await;
    let (_, ended) = events_until(&mut events, |e| matches!(e, Event::SessionEnded { .. })).await;
    assert_eq!(ended, Event::SessionEnded { end: SessionEnd::ClientClosed, reconnect_in: None });
    assert_eq!(next_event(&mut events).await, Event::State(State::Closed));
    assert!(node.next_conn_within(ms(300)).await.is_none(), "no reconnect");

    // Dropping every handle closes too.
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:1").await;
    wait_state(&mut events, State::Connected).await;
    let clone = client.clone();
    drop(client);
    assert!(node.next_conn_within(ms(100)).await.is_none());
    assert_eq!(clone.state(), State::Connected, "a clone keeps it open");
    drop(clone);
    assert_eq!(conn.client_close_code().await, Some(1000));
}

#[tokio::test]
async fn sends_resolve_on_their_ack_and_fail_clearly_otherwise() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:1").await;
    wait_state(&mut events, State::Connected).await;

    // Acked: the future resolves with the id the ack names.
    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send("u2", "hi").await }
    });
    let frame = conn.next_json().await.unwrap();
    assert_eq!(frame["type"], "send");
    assert_eq!((frame["to"].as_str(), frame["body"].as_str()), (Some("u2"), Some("hi")));
    let first_id = frame["client_msg_id"].as_str().unwrap().to_owned();
    // An ack for something else first: it must not resolve this send.
    conn.send(r#"{"type":"ack","client_msg_id":"other","id":"7:1"}"#).await;
    conn.send(&format!(r#"{{"type":"ack","client_msg_id":"{first_id}","id":"7:42"}}"#)).await;
    assert_eq!(sending.await.unwrap(), Ok(MessageId::new(7, 42)));

    // Refused: one send waiting, one error frame.
    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send("u2", "again").await }
    });
    let frame = conn.next_json().await.unwrap();
    assert_ne!(frame["client_msg_id"].as_str().unwrap(), first_id, "client_msg_ids are unique");
    conn.send(r#"{"type":"error","code":"rate_limited","message":"slow down"}"#).await;
    assert_eq!(
        sending.await.unwrap(),
        Err(SendError::Refused { code: "rate_limited".into(), message: "slow down".into() })
    );
    let (_, error) = events_until(&mut events, |e| matches!(e, Event::Error(_))).await;
    assert!(matches!(error, Event::Error(ClientError::Server { code, .. }) if code == "rate_limited"));

    // In flight when the connection drops: fails, the caller may retry.
    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send("u2", "lost").await }
    });
    assert_eq!(conn.next_json().await.unwrap()["body"], "lost");
    drop(conn);
    assert_eq!(sending.await.unwrap(), Err(SendError::ConnectionLost));
    // Not connected: fails at once.
    assert_eq!(client.state(), State::Connecting);
    assert_eq!(client.send("u2", "x").await, Err(SendError::NotConnected));
    client.close();
}

#[tokio::test]
async fn a_reader_that_falls_behind_loses_nothing() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let mut config = config(&[&lb.url]);
    config.event_capacity = 1;
    let (client, mut events) = RtcClient::connect(config).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:0").await;
    for offset in 0..300 {
        conn.send(&format!(r#"{{"type":"message","id":"3:{offset}","from":"u2","body":"m{offset}","ts_ms":1}}"#)).await;
    }
    // Not reading for a while: the buffer holds one event; the rest wait.
    tokio::time::sleep(ms(300)).await;
    let mut got = Vec::new();
    while got.len() < 300 {
        if let Event::Message { id, body, .. } = next_event(&mut events).await {
            assert_eq!(body, format!("m{}", id.offset));
            got.push(id.offset);
        }
    }
    assert_eq!(got, (0..300).collect::<Vec<i64>>());
    client.close();
}

#[tokio::test]
async fn a_silent_connection_is_taken_as_lost_and_resumed() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let mut config = config(&[&lb.url]);
    config.read_timeout = ms(300);
    let (client, mut events) = RtcClient::connect(config).unwrap();
    let mut conn = node.next_conn().await;
    conn.welcome("3:4").await;
    conn.send(r#"{"type":"message","id":"3:4","from":"u2","body":"x","ts_ms":1}"#).await;
    wait_state(&mut events, State::Connected).await;
    let silent_from = Instant::now();
    // The server goes silent but keeps the socket open (a half-open link).
    let (_, ended) = events_until(&mut events, |e| matches!(e, Event::SessionEnded { .. })).await;
    let waited = silent_from.elapsed();
    assert!(matches!(ended, Event::SessionEnded { end: SessionEnd::Lost(_), reconnect_in: Some(_) }), "{ended:?}");
    assert!(waited >= ms(250) && waited < ms(2_000), "lost after {waited:?}");
    let again = node.next_conn().await;
    assert_eq!(again.resume_query(), "last_id=3:4");
    drop(conn);
    client.close();
}

#[tokio::test]
async fn the_first_welcomes_live_from_is_kept_until_a_message_arrives() {
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let (client, mut events) = RtcClient::connect(config(&[&lb.url])).unwrap();
    let move_now = r#"{"type":"disconnect","reason":"rebalance","reconnect":true,"retry_after_ms":0}"#;
    let mut conn = node.next_conn().await;
    assert_eq!(conn.resume_query(), "");
    conn.welcome("3:7").await;
    conn.send(move_now).await;
    let _gone = conn.close_with(4001);
    // Moved twice before any message: still from the first live start.
    let mut conn = node.next_conn().await;
    assert_eq!(conn.resume_query(), "from_id=3:7");
    conn.welcome("3:9").await;
    conn.send(move_now).await;
    let _gone = conn.close_with(4001);
    let mut conn = node.next_conn().await;
    assert_eq!(conn.resume_query(), "from_id=3:7");
    conn.welcome("3:12").await;
    conn.send(r#"{"type":"resumed","from_id":"3:7","recovered":true,"replayed":1}"#).await;
    conn.send(r#"{"type":"message","id":"3:8","from":"u2","body":"x","ts_ms":1}"#).await;
    conn.send(move_now).await;
    let _gone = conn.close_with(4001);
    let conn = node.next_conn().await;
    assert_eq!(conn.resume_query(), "last_id=3:8", "a message moves the resume point");
    // The client reported the third session's end before it reconnected:
    // every event so far is buffered.
    let delivered: Vec<MessageId> = std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            Event::Message { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [MessageId::new(3, 8)]);
    client.close();
}

#[tokio::test]
async fn bad_settings_are_refused() {
    let bad = |f: &dyn Fn(&mut ClientConfig)| {
        let mut config = ClientConfig::new(["http://127.0.0.1:1"], "u1");
        f(&mut config);
        RtcClient::connect(config).err()
    };
    assert!(bad(&|_| {}).is_none());
    assert!(bad(&|c| c.route_urls.clear()).is_some());
    assert!(bad(&|c| c.route_urls = vec!["https://lb".into()]).is_some());
    assert!(bad(&|c| c.user = String::new()).is_some());
    assert!(bad(&|c| c.user = "a\nb".into()).is_some());
    assert!(bad(&|c| c.min_reconnect_delay = Duration::ZERO).is_some());
    assert!(bad(&|c| c.route_auth = Some("bad\nvalue".into())).is_some());
}
