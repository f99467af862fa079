//! Every session script of `core/protocol-vectors.json`, played by a fake
//! socket node (behind a fake load balancer) to the real client: the ids it
//! delivers, its `Recovered` events, the query it connects with, and where
//! the script says so, when and with what query it reconnects.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod fake;

use std::time::Duration;

use fake::*;
use rtc_client::{ClientConfig, Event, MessageId, RtcClient, SessionEnd, State};
use serde_json::{Value, json};

fn sessions() -> Vec<Value> {
    let vectors: Value = serde_json::from_str(rtc_core::protocol::VECTORS_JSON).unwrap();
    vectors["sessions"].as_array().expect("vectors have sessions").clone()
}

fn id_of(v: &Value) -> Option<MessageId> {
    v.as_str().map(|s| s.parse().unwrap())
}

#[tokio::test]
async fn the_vectors_have_session_scripts() {
    let names: Vec<String> = sessions().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect();
    assert!(names.len() >= 5, "{names:?}");
    assert!(sessions().iter().any(|s| s.get("reconnect_after_ms").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_script_is_acted_on_as_specified() {
    for case in sessions() {
        play(&case).await;
    }
}

async fn play(case: &Value) {
    let name = case["name"].as_str().unwrap();
    let told_to_move = case.get("reconnect_after_ms").is_some();
    let mut node = FakeNode::start().await;
    let lb = FakeLb::start(&node.url).await;
    let mut config = ClientConfig::new([lb.url.clone()], "u1");
    config.last_id = id_of(&case["last_id"]);
    config.live_from = case.get("live_from").and_then(id_of);
    // Backing off (instead of following retry_after_ms) would take at
    // least 5 s: the timing check below would see it.
    config.min_reconnect_delay = if told_to_move { Duration::from_secs(5) } else { ms(20) };
    let (client, mut events) = RtcClient::connect(config).unwrap();

    let mut first = node.next_conn().await;
    assert_eq!(json!(first.resume_query()), case["connect_query"], "{name}: first connect query");
    assert_eq!(first.token().as_deref(), Some("tok-1"), "{name}: the route's token");
    let mut disconnect_sent_at = None;
    for frame in case["frames"].as_array().unwrap() {
        let text = frame.as_str().unwrap();
        if text.contains(r#""type":"disconnect""#) {
            disconnect_sent_at = Some(tokio::time::Instant::now());
        }
        first.send(text).await;
    }
    // The script's close code, or (to see where the client resumes) a
    // normal close.
    let code = case.get("close_code").and_then(Value::as_u64).unwrap_or(1000) as u16;
    let first_gone = first.close_with(code);

    // Everything the session caused comes before its end.
    let (before, ended) = events_until(&mut events, |e| matches!(e, Event::SessionEnded { .. })).await;
    let delivered: Vec<Value> = before
        .iter()
        .filter_map(|e| match e {
            Event::Message { id, .. } => Some(json!(id.to_string())),
            _ => None,
        })
        .collect();
    let recovered: Vec<Value> = before
        .iter()
        .filter_map(|e| match e {
            Event::Recovered { recovered, reason } => Some(json!({"recovered": recovered, "reason": reason})),
            _ => None,
        })
        .collect();
    let states: Vec<&Event> = before.iter().filter(|e| matches!(e, Event::State(_))).collect();
    assert_eq!(json!(delivered), case["delivered"], "{name}: delivered ids");
    assert_eq!(json!(recovered), case["events"], "{name}: recovered events");
    assert_eq!(states, [&Event::State(State::Connecting), &Event::State(State::Connected)], "{name}");
    assert!(before.iter().all(|e| !matches!(e, Event::Error(_))), "{name}: no error in {before:?}");
    if let Event::SessionEnded { end, reconnect_in } = &ended {
        match case.get("reconnect_after_ms").and_then(Value::as_u64) {
            Some(wait) => {
                assert!(
                    matches!(end, SessionEnd::Disconnect { reconnect: true, retry_after, .. } if *retry_after == ms(wait)),
                    "{name}: {end:?}"
                );
                assert_eq!(*reconnect_in, Some(ms(wait)), "{name}");
            }
            None => assert_eq!(*end, SessionEnd::Closed { code: 1000, reason: String::new() }, "{name}"),
        }
    }
    assert_eq!(next_event(&mut events).await, Event::State(State::Connecting), "{name}");

    // The reconnect: through the load balancer, never while the first
    // socket is open, with the resume point the script names.
    let mut second = node.next_conn().await;
    let first_gone_at = first_gone.await.unwrap();
    assert!(second.accepted_at >= first_gone_at, "{name}: a second socket while the first was open");
    assert_eq!(lb.hits().len(), 2, "{name}: the reconnect asked the load balancer again");
    assert_eq!(second.token().as_deref(), Some("tok-2"), "{name}: with the new route's token");
    let next_query = second.resume_query();
    match (case.get("next_connect_query"), id_of(&case["last_id_after"])) {
        (Some(expected), _) => assert_eq!(json!(next_query), *expected, "{name}: next connect query"),
        (None, Some(last)) => assert_eq!(next_query, format!("last_id={last}"), "{name}: last id after the script"),
        (None, None) => assert!(!next_query.contains("last_id"), "{name}: no last id yet, got {next_query:?}"),
    }
    if let (Some(wait), Some(sent_at)) = (case.get("reconnect_after_ms").and_then(Value::as_u64), disconnect_sent_at) {
        let waited = second.accepted_at - sent_at;
        assert!(waited >= ms(wait), "{name}: reconnected after {waited:?}, before retry_after_ms {wait}");
        assert!(waited < ms(wait) + Duration::from_secs(2), "{name}: reconnected only after {waited:?}");
    }

    // The second session opens; closing ends it with a normal close.
    second.welcome("3:50").await;
    assert_eq!(next_event(&mut events).await, Event::State(State::Connected), "{name}");
    client.close();
    assert_eq!(second.client_close_code().await, Some(1000), "{name}");
    let (_, _) = events_until(&mut events, |e| *e == Event::State(State::Closed)).await;
    assert_eq!(client.state(), State::Closed);
    assert_eq!(tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap(), None, "{name}: events end");
}
