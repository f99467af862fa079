//! The protocol test vectors (`protocol-vectors.json`) hold for the Rust
//! definitions: the same file is what other clients are checked against.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use rtc_core::protocol::{
    ClientFrame, Cursor, MessageId, RecentSends, ServerFrame, VECTORS_JSON, is_new, parse_client_frame,
    reconnects_after,
};
use serde_json::{Value, json};

fn vectors() -> Value {
    serde_json::from_str(VECTORS_JSON).expect("the vectors file is JSON")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key].as_array().unwrap_or_else(|| panic!("vectors have a list {key:?}"))
}

/// The meaning of a parsed server frame in the vectors' terms.
fn meaning(frame: &ServerFrame<'_>) -> Value {
    let mut v = serde_json::to_value(frame).unwrap();
    match frame {
        ServerFrame::Message { id, from, .. } => {
            v["partition"] = json!(id.partition);
            v["offset"] = json!(id.offset);
            v["from"] = json!(from);
        }
        ServerFrame::Resumed { reason, .. } => v["reason"] = json!(reason),
        _ => {}
    }
    v
}

#[test]
fn server_frames_parse_to_their_meaning_and_render_back() {
    let v = vectors();
    for case in list(&v, "server_frames") {
        let text = case["text"].as_str().unwrap();
        let frame = ServerFrame::parse(text).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert_eq!(meaning(&frame), case["meaning"], "{}", case["name"]);
        assert_eq!(frame.kind(), case["meaning"]["type"], "{}", case["name"]);
        let rendered = frame.to_json();
        let again = ServerFrame::parse(&rendered).unwrap();
        assert_eq!(again, frame, "{} round-trips", case["name"]);
    }
}

#[test]
fn client_frames_round_trip_and_invalid_ones_are_refused_by_code() {
    let v = vectors();
    for case in list(&v, "client_frames") {
        let text = case["frame"].to_string();
        let frame = parse_client_frame(&text, 64 * 1024).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        let rendered: Value = serde_json::from_str(&frame.to_json()).unwrap();
        assert_eq!(rendered, case["frame"], "{}", case["name"]);
    }
    for case in list(&v, "invalid_client_frames") {
        let text = case["text"].as_str().unwrap();
        let err = parse_client_frame(text, 64 * 1024).expect_err(text);
        assert_eq!(err.code.as_str(), case["error"], "{text}");
    }
    assert!(matches!(
        parse_client_frame(r#"{"type":"resume","last_id":null,"extra":1}"#, 1024),
        Ok(ClientFrame::Resume { last_id: None })
    ));
}

#[test]
fn message_ids_close_codes_and_dedupe() {
    let v = vectors();
    for case in list(&v, "message_ids") {
        let id = case["id"].as_str().unwrap();
        let parsed = id.parse::<MessageId>();
        if case["valid"] == json!(false) {
            assert!(parsed.is_err(), "{id:?} is refused");
        } else {
            let parsed = parsed.unwrap();
            assert_eq!(json!(parsed.partition), case["partition"], "{id}");
            assert_eq!(json!(parsed.offset), case["offset"], "{id}");
            assert_eq!(parsed.to_string(), id);
        }
    }
    for case in list(&v, "close_codes") {
        let code = case["code"].as_u64().unwrap() as u16;
        assert_eq!(json!(reconnects_after(code)), case["reconnect"], "{code}");
        if let Some(reason) = case.get("reason") {
            let reason: rtc_core::protocol::CloseReason = serde_json::from_value(reason.clone()).unwrap();
            assert_eq!(reason.close_code(), code);
        }
    }
    let id = |v: &Value| v.as_str().map(|s| s.parse::<MessageId>().unwrap());
    for case in list(&v, "dedupe") {
        assert_eq!(json!(is_new(id(&case["last_id"]), id(&case["id"]).unwrap())), case["deliver"], "{case}");
    }
}

#[test]
fn session_scripts_deliver_what_they_say_with_one_comparison() {
    let v = vectors();
    for case in list(&v, "sessions") {
        let mut cursor = Cursor::new(id_of(&case["last_id"]), case.get("live_from").and_then(id_of));
        let query = |c: &Cursor| c.resume_point().map(|(k, id)| format!("{k}={id}")).unwrap_or_default();
        assert_eq!(json!(query(&cursor)), case["connect_query"], "{}", case["name"]);
        let mut recent_sends = RecentSends::default();
        let (mut delivered, mut events) = (Vec::new(), Vec::new());
        for text in case["frames"].as_array().unwrap() {
            match ServerFrame::parse(text.as_str().unwrap()).unwrap() {
                ServerFrame::Welcome { live_from, .. } => cursor.welcomed(live_from),
                ServerFrame::Message { id, from, client_msg_id, .. }
                    if cursor.accept(id) && recent_sends.first_copy(from.as_deref(), client_msg_id.as_deref()) =>
                {
                    delivered.push(json!(id.to_string()));
                }
                ServerFrame::Resumed { recovered, reason, .. } => {
                    cursor.resumed(recovered);
                    events.push(json!({"recovered": recovered, "reason": reason}))
                }
                ServerFrame::Disconnect { through, .. } => cursor.disconnected(through),
                _ => {}
            }
        }
        assert_eq!(json!(delivered), case["delivered"], "{}", case["name"]);
        assert_eq!(json!(events), case["events"], "{}", case["name"]);
        assert_eq!(json!(cursor.last_id().map(|l| l.to_string())), case["last_id_after"], "{}", case["name"]);
        if let Some(next) = case.get("next_connect_query") {
            assert_eq!(json!(query(&cursor)), *next, "{}", case["name"]);
        }
    }
}

#[test]
fn recent_sends_forget_the_oldest_pair_beyond_their_bound() {
    let mut recent = RecentSends::default();
    for n in 0..rtc_core::protocol::RECENT_SENDS {
        assert!(recent.first_copy(Some("u2"), Some(&format!("c-{n}"))));
    }
    assert!(!recent.first_copy(Some("u2"), Some("c-0")), "still remembered");
    assert!(recent.first_copy(Some("u2"), Some("c-new")), "a new pair pushes out the oldest");
    assert!(!recent.first_copy(Some("u2"), Some("c-1")), "c-1 is still remembered");
    assert!(recent.first_copy(Some("u2"), Some("c-0")), "c-0, the oldest, was forgotten");
    assert!(!recent.first_copy(Some("u2"), Some("c-new")));
    assert!(recent.first_copy(None, Some("c-new")) && recent.first_copy(Some("u2"), None), "no pair, no dedupe");
}

fn id_of(v: &Value) -> Option<MessageId> {
    v.as_str().map(|s| s.parse().unwrap())
}
