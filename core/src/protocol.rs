//! The WebSocket protocol between a client and a socket node: JSON text
//! frames with a `type`, the close codes and reasons, and message ids.
//!
//! This is the one definition: the socket node, the Rust client, the load
//! generator and the benchmarks all use it, and `protocol-vectors.json`
//! beside this crate's manifest holds frames with their meaning for clients
//! in other languages (see `docs/ARCHITECTURE.md`, "Protocol").
//!
//! The delivery guarantee the frames carry: a user's messages arrive in
//! strictly increasing [`MessageId`] order, each at least once per session,
//! so a client dedupes with one comparison against the last id it processed.
//! A client reconnects with `last_id` (the last id it processed) or, before
//! its first message, `from_id` (the `live_from` of its first welcome).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A message's position in the log: `partition:offset`, the same on every
/// node. Ids of one user's partition grow with the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub partition: u32,
    pub offset: i64,
}

impl MessageId {
    pub const fn new(partition: u32, offset: i64) -> Self {
        Self { partition, offset }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// An id that is not `partition:offset` with both parts non-negative
/// decimal integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message id {0:?} is not partition:offset")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMessageId(s.chars().take(64).collect());
        let (p, o) = s.split_once(':').ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(p) || !digits(o) {
            return Err(bad());
        }
        Ok(Self { partition: p.parse().map_err(|_| bad())?, offset: o.parse().map_err(|_| bad())? })
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

crate::label_values! {
    /// Why the server closes a session. Every reason asks the client to
    /// reconnect (through the load balancer), with its last id. Also the
    /// `reason` label of `rtc_socket_disconnects_total`.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum CloseReason {
        /// Its partition moved to another node.
        Rebalance => "rebalance",
        /// This node is draining before it stops.
        Drain => "drain",
        /// This node is stopping now.
        Shutdown => "shutdown",
        /// The client did not read its messages in time.
        Slow => "slow",
        /// The client sent nothing, not even a pong, for too long.
        Idle => "idle",
        /// The log could not be read in time to replay what the client
        /// missed: it resumes again, from the same id, after the delay.
        Unavailable => "unavailable",
    }
}

/// First close code that tells a client not to reconnect.
pub const TERMINAL_CLOSE_CODE: u16 = 4500;

impl CloseReason {
    /// WebSocket close code: 4000–4499 ask the client to reconnect, 4500+
    /// ([`TERMINAL_CLOSE_CODE`]) tell it not to.
    pub const fn close_code(self) -> u16 {
        match self {
            Self::Rebalance => 4001,
            Self::Drain => 4002,
            Self::Shutdown => 4003,
            Self::Slow => 4004,
            Self::Idle => 4005,
            Self::Unavailable => 4006,
        }
    }
}

/// Whether a client should reconnect after the server closed with `code`.
/// 1000–1015 (normal closes, going away, abnormal) and 4000–4499 yes; 4500+
/// and the other application codes no.
pub const fn reconnects_after(code: u16) -> bool {
    code < 3000 || (code >= 4000 && code < TERMINAL_CLOSE_CODE)
}

crate::label_values! {
    /// Why a resume could not recover the gap: the client reloads its state
    /// from the application. Also the `reason` label of
    /// `rtc_socket_resume_unrecovered_total`.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ResumeFailure {
        /// The id is below the log start: retention removed what followed it.
        Expired => "expired",
        /// More records than the node's bound would have to be scanned.
        TooFarBehind => "too_far_behind",
        /// The id is not in this user's partition (the partition count changed).
        WrongPartition => "wrong_partition",
        /// The id is not `partition:offset`.
        BadId => "bad_id",
        /// The log could not be read in time (Kafka down or too slow).
        Unavailable => "unavailable",
    }
}

/// A frame the server sends. Strings borrow from the text they are parsed
/// from where they can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The session is open. With `last_id` or `from_id` in the connect URL,
    /// the replayed messages and a `resumed` frame follow before live
    /// messages.
    Welcome {
        #[serde(borrow)]
        node_id: Cow<'a, str>,
        #[serde(borrow)]
        user: Cow<'a, str>,
        partition: u32,
        epoch: u64,
        /// The first id this session delivers live. A client that has no
        /// last id yet reconnects with `from_id` set to this, so nothing
        /// sent while it is away is missed. Always sent by this version;
        /// optional so clients work with older nodes during an upgrade.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        live_from: Option<MessageId>,
    },
    /// One message for the user.
    Message {
        id: MessageId,
        #[serde(borrow, default)]
        from: Option<Cow<'a, str>>,
        #[serde(borrow)]
        body: Cow<'a, str>,
        ts_ms: i64,
        /// The sender's `client_msg_id`, when it gave one: a client that
        /// retries a send after losing its session sends it again under the
        /// same one, and the recipient's client drops the second copy
        /// ([`RecentSends`]).
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<Cow<'a, str>>,
    },
    /// The replay is complete; live messages follow.
    Resumed {
        /// The `last_id` the client resumed after, as it sent it.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        last_id: Option<Cow<'a, str>>,
        /// The `from_id` the client resumed from, as it sent it.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        from_id: Option<Cow<'a, str>>,
        /// Every message after `last_id` was delivered before this frame.
        recovered: bool,
        /// Messages delivered by the replay.
        replayed: u64,
        /// Why not, when `recovered` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ResumeFailure>,
    },
    /// A `send` reached the log as message `id`.
    Ack {
        #[serde(borrow, default)]
        client_msg_id: Option<Cow<'a, str>>,
        id: MessageId,
    },
    /// The server closes the session; reconnect after `retry_after_ms`.
    Disconnect {
        reason: CloseReason,
        reconnect: bool,
        retry_after_ms: u64,
        /// Every message of the user below this id was sent before this
        /// frame (a move's close, after the node flushed the session): the
        /// client resumes from it when it is past its last id, so the next
        /// node replays nothing the client has already been past.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        through: Option<MessageId>,
    },
    /// A client frame was refused, or a `send` failed.
    Error {
        #[serde(borrow)]
        code: Cow<'a, str>,
        #[serde(borrow)]
        message: Cow<'a, str>,
        /// The refused `send`'s `client_msg_id`, when it had one.
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<Cow<'a, str>>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Every field is a string, number, bool or enum: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The frame's `type`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Message { .. } => "message",
            Self::Resumed { .. } => "resumed",
            Self::Ack { .. } => "ack",
            Self::Disconnect { .. } => "disconnect",
            Self::Error { .. } => "error",
        }
    }

    /// Parses a server frame; unknown fields are ignored.
    pub fn parse(text: &str) -> Result<ServerFrame<'_>, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The Kafka record header naming the sender (a `message`'s `from`).
pub const FROM_HEADER: &str = "rtc-from";
/// The Kafka record header carrying the sender's `client_msg_id`.
pub const CLIENT_MSG_ID_HEADER: &str = "rtc-client-msg-id";

/// Renders a `message` frame without building a [`ServerFrame`] (the socket
/// node renders each record once for every session that gets it).
pub fn render_message(
    id: MessageId,
    from: Option<&str>,
    body: &str,
    ts_ms: i64,
    client_msg_id: Option<&str>,
) -> String {
    ServerFrame::Message {
        id,
        from: from.map(Cow::Borrowed),
        body: Cow::Borrowed(body),
        ts_ms,
        client_msg_id: client_msg_id.map(Cow::Borrowed),
    }
    .to_json()
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send `body` to user `to`; acknowledged by `ack` with the same
    /// `client_msg_id`.
    Send {
        to: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// Replay what followed `last_id`. Accepted only as the first frame of a
    /// session opened without `last_id` in its URL (the URL is preferred).
    Resume {
        #[serde(default)]
        last_id: Option<String>,
    },
}

impl ClientFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

crate::label_values! {
    /// Why a socket node refuses a connection before the upgrade: the
    /// `error` of its JSON answer (`{"error","message","epoch"}`). The
    /// client answers every one by asking the load balancer again (for a
    /// new token, too).
    pub enum ConnectRefusal {
        Starting => "starting",
        Draining => "draining",
        BadToken => "bad_token",
        TokenReused => "token_reused",
        WrongNode => "wrong_node",
        NotOwner => "not_owner",
        AtCapacity => "at_capacity",
        NotWebsocket => "not_websocket",
    }
}

crate::label_values! {
    /// Why a client frame was refused: the `code` of the error frame and the
    /// `reason` label of `rtc_socket_invalid_frames_total`.
    pub enum InvalidFrame {
        BadFrame => "bad_frame",
        TooLarge => "too_large",
        UnknownType => "unknown_type",
        RateLimited => "rate_limited",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct FrameError {
    pub code: InvalidFrame,
    pub message: String,
}

/// Parses one client text frame of at most `max_bytes`. Unknown fields are
/// ignored; an unknown `type` is its own error so newer clients can tell.
pub fn parse_client_frame(text: &str, max_bytes: usize) -> Result<ClientFrame, FrameError> {
    if text.len() > max_bytes {
        return Err(FrameError { code: InvalidFrame::TooLarge, message: format!("frame over {max_bytes} bytes") });
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FrameError { code: InvalidFrame::BadFrame, message: format!("not JSON: {e}") })?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("send" | "resume") => {}
        Some(other) => {
            let other: String = other.chars().take(32).collect();
            return Err(FrameError {
                code: InvalidFrame::UnknownType,
                message: format!("unknown frame type {other:?}"),
            });
        }
        None => return Err(FrameError { code: InvalidFrame::BadFrame, message: "no string field `type`".into() }),
    }
    serde_json::from_value(value).map_err(|e| FrameError { code: InvalidFrame::BadFrame, message: e.to_string() })
}

/// What a client does with a message id it receives, given the last id it
/// processed: the whole client-side dedupe.
pub fn is_new(last: Option<MessageId>, id: MessageId) -> bool {
    match last {
        Some(last) if last.partition == id.partition => id.offset > last.offset,
        // Another partition: the user was repartitioned; the server already
        // said so with `resumed{wrong_partition}`.
        _ => true,
    }
}

/// How many `(from, client_msg_id)` pairs a client remembers to drop a
/// retried send's second copy. A retry follows its first copy within a
/// send timeout (seconds), so this covers far more than the messages a user
/// receives in between.
pub const RECENT_SENDS: usize = 1024;

/// The sends a client delivered lately, by `(from, client_msg_id)`: a send
/// whose ack was lost with its session is sent again, reaches the log twice
/// under two ids, and only the first copy is delivered. Bounded: the oldest
/// pair is forgotten first.
#[derive(Debug, Clone, Default)]
pub struct RecentSends {
    order: std::collections::VecDeque<(String, String)>,
    seen: std::collections::HashSet<(String, String)>,
}

impl RecentSends {
    /// Whether a message is the first copy of its send (messages without a
    /// sender or `client_msg_id` always are); remembers it.
    pub fn first_copy(&mut self, from: Option<&str>, client_msg_id: Option<&str>) -> bool {
        let (Some(from), Some(client_msg_id)) = (from, client_msg_id) else { return true };
        let key = (from.to_owned(), client_msg_id.to_owned());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= RECENT_SENDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// Where a client resumes from: the last id it processed, else the
/// `live_from` of its first welcome (nothing delivered yet), else nowhere
/// (a first connect); but from a disconnect's `through` when that is
/// further on (or in another partition: the newer session's). The query
/// parameter to connect with and its value.
pub fn resume_point(
    last: Option<MessageId>,
    live_from: Option<MessageId>,
    through: Option<MessageId>,
) -> Option<(&'static str, MessageId)> {
    let base = match (last, live_from) {
        (Some(last), _) => Some(("last_id", last)),
        (None, Some(from)) => Some(("from_id", from)),
        (None, None) => None,
    };
    let Some(through) = through else { return base };
    let further = match base {
        None => true,
        Some((_, id)) if id.partition != through.partition => true,
        Some(("last_id", id)) => through.offset > id.offset.saturating_add(1),
        Some((_, id)) => through.offset > id.offset,
    };
    if further { Some(("from_id", through)) } else { base }
}

/// Where a client is in its user's messages, and so where its next connect
/// resumes ([`resume_point`]): the last id it delivered (the whole dedupe is
/// one comparison, [`is_new`]), else a welcome's `live_from`.
///
/// Which `live_from`: a session's live start L says that every record from L
/// on reaches it. Until that session's `resumed` frame, the records before L
/// that the resume asked for are not all delivered, so the earlier start is
/// kept. After `resumed` (all replayed, or given up with `recovered:false`)
/// this session's L is the point to come back to. Keeping the first one
/// forever would make every later resume scan further back, and after a
/// `recovered:false` it would be refused again on every connect, each time
/// losing what arrived between two sessions.
///
/// A move's `disconnect` may carry `through`: every message below it was
/// sent before the frame. The next connect resumes from there when that is
/// further on than the last id, so a user who received nothing for a while
/// does not make the next node scan the log from its last message. A
/// welcome or message in another partition drops it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    last: Option<MessageId>,
    live_from: Option<MessageId>,
    session_live_from: Option<MessageId>,
    through: Option<MessageId>,
}

impl Cursor {
    /// Starts after `last` (an id the application processed before), or
    /// from `live_from` (a welcome seen before any message), or from nothing.
    pub fn new(last: Option<MessageId>, live_from: Option<MessageId>) -> Self {
        Self { last, live_from, session_live_from: None, through: None }
    }

    pub fn last_id(&self) -> Option<MessageId> {
        self.last
    }

    /// The live start to resume from while nothing was delivered.
    pub fn live_from(&self) -> Option<MessageId> {
        self.live_from
    }

    /// Whether `id` is new; a new id becomes the last one.
    pub fn accept(&mut self, id: MessageId) -> bool {
        self.drop_through_outside(id.partition);
        let new = is_new(self.last, id);
        if new {
            self.last = Some(id);
        }
        new
    }

    /// A session's welcome, with its `live_from` (absent from older nodes).
    pub fn welcomed(&mut self, live_from: Option<MessageId>) {
        if let Some(id) = live_from {
            self.drop_through_outside(id.partition);
        }
        self.session_live_from = live_from;
        if self.live_from.is_none() {
            self.live_from = live_from;
        }
    }

    /// The session's `resumed` frame: the replay is over. Without a
    /// delivered message, or when the resume could not recover (the
    /// application reloads its state), the session's live start becomes
    /// the resume point.
    pub fn resumed(&mut self, recovered: bool) {
        if !recovered {
            self.last = None;
        }
        if self.last.is_none() && self.session_live_from.is_some() {
            self.live_from = self.session_live_from;
        }
    }

    /// A `disconnect` frame's `through`: the client has every message below
    /// it. An absent one changes nothing (an earlier one still holds).
    pub fn disconnected(&mut self, through: Option<MessageId>) {
        if through.is_some() {
            self.through = through;
        }
    }

    /// A `through` of another partition than the user's now is stale (the
    /// partition count changed): resuming from it would be refused as
    /// `wrong_partition` on every connect, each time giving up the last id.
    fn drop_through_outside(&mut self, partition: u32) {
        if self.through.is_some_and(|t| t.partition != partition) {
            self.through = None;
        }
    }

    /// The connect query's resume parameter: `("last_id", id)`,
    /// `("from_id", id)` or none (a first connect).
    pub fn resume_point(&self) -> Option<(&'static str, MessageId)> {
        resume_point(self.last, self.live_from, self.through)
    }

    /// What the connect URL adds after the token: `&last_id=P:O`,
    /// `&from_id=P:O` or nothing.
    pub fn query(&self) -> String {
        self.resume_point().map(|(key, id)| format!("&{key}={id}")).unwrap_or_default()
    }
}

/// The test vectors file, for tests in this workspace.
pub const VECTORS_JSON: &str = include_str!("../protocol-vectors.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip_and_refuse_anything_else() {
        let id: MessageId = "17:4711".parse().unwrap();
        assert_eq!(id, MessageId::new(17, 4711));
        assert_eq!(id.to_string(), "17:4711");
        for bad in ["", "17", "a:1", "1:b", "-1:3", "1:-3", "1:+3", " 1:3", "1:3:4", "99999999999:1"] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
        assert!(MessageId::new(3, 9) < MessageId::new(3, 10));
    }

    #[test]
    fn close_codes_split_into_reconnect_and_terminal() {
        for reason in CloseReason::LABELS {
            let r: CloseReason = serde_json::from_value(serde_json::json!(reason)).unwrap();
            assert!(reconnects_after(r.close_code()), "{reason}");
        }
        assert!(reconnects_after(1006));
        assert!(!reconnects_after(4500));
        assert!(!reconnects_after(4999));
        assert!(!reconnects_after(3000));
    }

    fn id(s: &str) -> MessageId {
        s.parse().unwrap()
    }

    #[test]
    fn a_cursor_accepts_only_ids_above_the_last() {
        let mut c = Cursor::new(Some(id("3:10")), None);
        assert!(!c.accept(id("3:10")), "the same id again");
        assert!(!c.accept(id("3:2")), "an older id");
        assert_eq!(c.last_id(), Some(id("3:10")), "a duplicate does not move the last id");
        assert!(c.accept(id("3:11")));
        assert!(c.accept(id("3:15")));
        assert!(!c.accept(id("3:12")), "below the last one, even if never seen");
        // Another partition (the partition count changed): starts over there.
        assert!(c.accept(id("4:1")));
        assert_eq!(c.last_id(), Some(id("4:1")));
        assert!(Cursor::default().accept(id("0:0")));
    }

    #[test]
    fn a_cursor_resumes_from_the_last_id_else_the_live_start_of_the_last_finished_replay() {
        let mut c = Cursor::default();
        assert_eq!(c.query(), "", "a first connect resumes nothing");
        c.welcomed(Some(id("3:7")));
        assert_eq!(c.query(), "&from_id=3:7");
        c.welcomed(Some(id("3:9")));
        assert_eq!(c.query(), "&from_id=3:7", "the replay of [3:7, 3:9) is not over yet");
        c.resumed(true);
        assert_eq!(c.query(), "&from_id=3:9", "replayed, nothing for this user: resume from this session's start");
        assert!(c.accept(id("3:9")));
        c.welcomed(Some(id("3:20")));
        c.resumed(true);
        assert_eq!(c.query(), "&last_id=3:9", "a last id wins");
        c.welcomed(Some(id("3:900")));
        c.resumed(false);
        assert_eq!(c.last_id(), None, "the gap is given up");
        assert_eq!(c.query(), "&from_id=3:900", "not 3:9 again, which would be refused again");
        let mut old_node = Cursor::new(None, Some(id("3:7")));
        old_node.welcomed(None);
        old_node.resumed(true);
        assert_eq!(old_node.query(), "&from_id=3:7", "a welcome without live_from changes nothing");
    }

    #[test]
    fn a_cursor_resumes_from_a_moves_through_when_it_is_further_on() {
        let mut c = Cursor::new(Some(id("3:10")), None);
        c.disconnected(Some(id("3:11")));
        assert_eq!(c.query(), "&last_id=3:10", "through right after the last id: the same point");
        c.disconnected(Some(id("3:500")));
        assert_eq!(c.query(), "&from_id=3:500", "nothing for the user in between: no scan from 3:11");
        c.disconnected(None);
        assert_eq!(c.query(), "&from_id=3:500", "a close without through keeps the last one");
        c.welcomed(Some(id("3:498")));
        assert!(c.accept(id("3:600")));
        assert_eq!(c.query(), "&last_id=3:600", "a later message wins");
        let mut fresh = Cursor::default();
        fresh.welcomed(Some(id("3:7")));
        fresh.disconnected(Some(id("3:9")));
        assert_eq!(fresh.query(), "&from_id=3:9", "past the live start");
        let mut repartitioned = Cursor::new(Some(id("3:10")), None);
        repartitioned.disconnected(Some(id("5:2")));
        assert_eq!(repartitioned.query(), "&from_id=5:2", "the newer session's partition");
        // The user moved to another partition since: the old through is stale.
        let mut stale = Cursor::new(Some(id("3:10")), None);
        stale.disconnected(Some(id("3:500")));
        stale.welcomed(Some(id("5:100")));
        stale.resumed(false);
        assert!(stale.accept(id("5:120")));
        assert_eq!(stale.query(), "&last_id=5:120", "not from_id=3:500, refused again and again");
        let mut by_message = Cursor::new(None, None);
        by_message.disconnected(Some(id("3:500")));
        assert!(by_message.accept(id("5:7")));
        assert_eq!(by_message.query(), "&last_id=5:7");
    }

    #[test]
    fn client_dedupe_is_one_comparison() {
        let last = Some(MessageId::new(3, 10));
        assert!(!is_new(last, MessageId::new(3, 10)));
        assert!(!is_new(last, MessageId::new(3, 9)));
        assert!(is_new(last, MessageId::new(3, 11)));
        assert!(is_new(None, MessageId::new(3, 0)));
    }
}
