//! The peers' wire formats, for client fleets that measure rtc beside them
//! (`scripts/bench-peers`): a Socket.IO 4 server (Engine.IO v4 over the
//! websocket transport, no polling) and a bare `ws` server, both fed by
//! `bench/peers/emit.mjs` with `{"id","ts","body"}` messages.

use serde::Deserialize;

/// One message as the peers' producer sends it (`body` is not looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PeerMessage {
    /// The producer's sequence number: unique in a run.
    pub id: u64,
    /// When it was produced (Unix milliseconds).
    pub ts: i64,
}

/// A Socket.IO session's URL: the websocket transport straight away.
pub fn socketio_url(server: &str, user: &str) -> String {
    format!("ws://{server}/socket.io/?EIO=4&transport=websocket&user={user}")
}

pub fn ws_url(server: &str, user: &str) -> String {
    format!("ws://{server}/?user={user}")
}

/// What a Socket.IO client does with one text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketIoFrame {
    /// Engine.IO `open` (`0{…}`): answer with a Socket.IO connect (`40`).
    Open,
    /// Socket.IO connected (`40{"sid":…}`).
    Connected,
    /// Engine.IO ping (`2`): answer with a pong (`3`).
    Ping,
    /// An `m` event (`42["m",{…}]`).
    Message(PeerMessage),
    Other,
}

/// The Socket.IO connect packet, and the pong.
pub const SOCKETIO_CONNECT: &str = "40";
pub const SOCKETIO_PONG: &str = "3";

pub fn socketio_frame(text: &str) -> SocketIoFrame {
    if text == "2" {
        SocketIoFrame::Ping
    } else if let Some(event) = text.strip_prefix("42") {
        match serde_json::from_str::<(String, PeerMessage)>(event) {
            Ok((name, message)) if name == "m" => SocketIoFrame::Message(message),
            _ => SocketIoFrame::Other,
        }
    } else if text.starts_with("40") {
        SocketIoFrame::Connected
    } else if text.starts_with('0') {
        SocketIoFrame::Open
    } else {
        SocketIoFrame::Other
    }
}

/// A `ws` server's frame is the producer's message as is.
pub fn ws_message(text: &str) -> Option<PeerMessage> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_frames_as_a_socket_io_4_server_sends_them() {
        let open = r#"0{"sid":"4BEmlpNqh95o2Qq7AAAB","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(socketio_frame(open), SocketIoFrame::Open);
        assert_eq!(socketio_frame(r#"40{"sid":"skGEFzXk7mVjoGbXAAAu"}"#), SocketIoFrame::Connected);
        assert_eq!(socketio_frame("2"), SocketIoFrame::Ping);
        let event = r#"42["m",{"id":17,"ts":1796144572699,"body":"17:xxxx"}]"#;
        assert_eq!(socketio_frame(event), SocketIoFrame::Message(PeerMessage { id: 17, ts: 1_796_144_572_699 }));
        assert_eq!(socketio_frame(r#"42["other",{"id":1,"ts":2}]"#), SocketIoFrame::Other);
        assert_eq!(socketio_frame("42[broken"), SocketIoFrame::Other);
        assert_eq!(socketio_frame("41"), SocketIoFrame::Other);
    }

    #[test]
    fn ws_frames_are_the_producers_json() {
        let text = r#"{"user":"user-10","id":0,"ts":1796144576900,"body":"0:xx"}"#;
        assert_eq!(ws_message(text), Some(PeerMessage { id: 0, ts: 1_796_144_576_900 }));
        assert_eq!(ws_message("not json"), None);
    }
}
