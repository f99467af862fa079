//! The WebSocket protocol: JSON text frames with a `type`.

use serde::{Deserialize, Serialize};

rtc_core::label_values! {
    /// Why a session is closed by the server. Every reason but `Slow` on a
    /// healthy node invites the client to reconnect (through the load
    /// balancer). Also the `reason` label of `rtc_socket_disconnects_total`.
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum CloseReason {
        /// Its partition moved to another node.
        Rebalance => "rebalance",
        /// This node is draining before it stops.
        Drain => "drain",
        /// This node is stopping now.
        Shutdown => "shutdown",
        /// The session could not keep up with its messages.
        Slow => "slow",
        /// The client sent nothing, not even a pong, for too long.
        Idle => "idle",
    }
}

impl CloseReason {
    /// WebSocket close code: 4000–4499 ask the client to reconnect.
    pub fn close_code(self) -> u16 {
        match self {
            Self::Rebalance => 4001,
            Self::Drain => 4002,
            Self::Shutdown => 4003,
            Self::Slow => 4004,
            Self::Idle => 4005,
        }
    }

    /// Closes that hand the session's undelivered messages to the next
    /// owner of its partition (through the committed offset).
    pub fn hands_off(self) -> bool {
        matches!(self, Self::Rebalance | Self::Drain | Self::Shutdown)
    }
}

/// Frames the server sends, other than `message` (pre-rendered once per
/// record, see [`render_message`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome { node_id: &'a str, user: &'a str, partition: u32, epoch: u64 },
    Ack { client_msg_id: Option<&'a str>, id: String },
    Disconnect { reason: CloseReason, reconnect: bool, retry_after_ms: u64 },
    Error { code: &'static str, message: String },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames serialise")
    }
}

/// Renders a `message` frame.
pub fn render_message(id: &str, from: Option<&str>, body: &str, ts_ms: i64) -> String {
    #[derive(Serialize)]
    struct Message<'a> {
        r#type: &'static str,
        id: &'a str,
        from: Option<&'a str>,
        body: &'a str,
        ts_ms: i64,
    }
    serde_json::to_string(&Message { r#type: "message", id, from, body, ts_ms }).expect("message frames serialise")
}

/// Frames a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send { to: String, body: String, client_msg_id: Option<String> },
    Resume { last_id: Option<String> },
}

rtc_core::label_values! {
    /// Why a client frame was refused: the `code` of the error frame and the
    /// `reason` label of `rtc_socket_invalid_frames_total`.
    pub enum InvalidFrame {
        BadFrame => "bad_frame",
        TooLarge => "too_large",
        UnknownType => "unknown_type",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: InvalidFrame,
    pub message: String,
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str, max_bytes: usize) -> Result<ClientFrame, FrameError> {
    if text.len() > max_bytes {
        return Err(FrameError { code: InvalidFrame::TooLarge, message: format!("frame over {max_bytes} bytes") });
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FrameError { code: InvalidFrame::BadFrame, message: format!("not JSON: {e}") })?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("send" | "resume") => {}
        Some(other) => {
            return Err(FrameError {
                code: InvalidFrame::UnknownType,
                message: format!("unknown frame type {other:?}"),
            });
        }
        None => return Err(FrameError { code: InvalidFrame::BadFrame, message: "no string field `type`".into() }),
    }
    serde_json::from_value(value).map_err(|e| FrameError { code: InvalidFrame::BadFrame, message: e.to_string() })
}

/// A message id is `partition:offset`, stable across nodes.
pub fn message_id(partition: u32, offset: i64) -> String {
    format!("{partition}:{offset}")
}

pub fn parse_message_id(id: &str) -> Option<(u32, i64)> {
    let (p, o) = id.split_once(':')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames() {
        assert_eq!(
            parse_client_frame(r#"{"type":"send","to":"u2","body":"hi","client_msg_id":"c-9"}"#, 1024),
            Ok(ClientFrame::Send { to: "u2".into(), body: "hi".into(), client_msg_id: Some("c-9".into()) })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"resume","last_id":"17:4711","extra":1}"#, 1024),
            Ok(ClientFrame::Resume { last_id: Some("17:4711".into()) })
        );
        let err = |text: &str, max| parse_client_frame(text, max).unwrap_err().code.as_str();
        assert_eq!(err("{", 1024), "bad_frame");
        assert_eq!(err("[1]", 1024), "bad_frame");
        assert_eq!(err(r#"{"type":7}"#, 1024), "bad_frame");
        assert_eq!(err(r#"{"type":"send","to":"u2"}"#, 1024), "bad_frame");
        assert_eq!(err(r#"{"type":"shout"}"#, 1024), "unknown_type");
        assert_eq!(err(&format!(r#"{{"type":"send","to":"u","body":"{}"}}"#, "x".repeat(100)), 64), "too_large");
    }

    #[test]
    fn server_frames_match_the_contract() {
        let v: serde_json::Value = serde_json::from_str(
            &ServerFrame::Disconnect { reason: CloseReason::Rebalance, reconnect: true, retry_after_ms: 120 }.to_json(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"disconnect","reason":"rebalance","reconnect":true,"retry_after_ms":120})
        );
        let v: serde_json::Value =
            serde_json::from_str(&render_message("17:4711", Some("u2"), "{\"a\":1}", 5)).unwrap();
        assert_eq!(v, serde_json::json!({"type":"message","id":"17:4711","from":"u2","body":"{\"a\":1}","ts_ms":5}));
        let v: serde_json::Value = serde_json::from_str(
            &ServerFrame::Welcome { node_id: "socket-0", user: "u1", partition: 17, epoch: 42 }.to_json(),
        )
        .unwrap();
        assert_eq!(v, serde_json::json!({"type":"welcome","node_id":"socket-0","user":"u1","partition":17,"epoch":42}));
    }

    #[test]
    fn message_ids() {
        assert_eq!(message_id(17, 4711), "17:4711");
        assert_eq!(parse_message_id("17:4711"), Some((17, 4711)));
        for bad in ["", "17", "a:1", "1:b", "-1:3"] {
            assert_eq!(parse_message_id(bad), None, "{bad}");
        }
        for reason in [CloseReason::Rebalance, CloseReason::Drain, CloseReason::Slow, CloseReason::Idle] {
            assert!((4000..4500).contains(&reason.close_code()));
        }
    }
}
