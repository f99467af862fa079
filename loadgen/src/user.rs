//! One simulated user's life: ask a load balancer for its route, connect
//! with the token, read its messages (deduped by id in the ledger), follow
//! `disconnect` and close codes to reconnect (`resume` with the last id it
//! saw), and leave cleanly when told to. It never opens a socket before the
//! previous one is closed; a per-user socket count checks that.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::backoff::{Backoff, Next, SessionEnd, next_after};
use crate::route::{self, RouteError};
use crate::stats::Stats;

/// How long a closing session waits for the other side's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// A frame from the server, as far as a client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Welcome { node_id: Cow<'a, str>, partition: Option<u32> },
    Message { id: Cow<'a, str>, body: Cow<'a, str> },
    Disconnect { reason: Cow<'a, str>, reconnect: bool, retry_after_ms: u64 },
    Error { code: Cow<'a, str> },
    Other,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    node_id: Option<Cow<'a, str>>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    reconnect: Option<bool>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

/// Parses a server text frame; `None` when it is not protocol JSON.
pub fn parse_frame(text: &str) -> Option<Frame<'_>> {
    let f: Incoming<'_> = serde_json::from_str(text).ok()?;
    Some(match f.kind.as_ref() {
        "welcome" => Frame::Welcome { node_id: f.node_id?, partition: f.partition },
        "message" => Frame::Message { id: f.id?, body: f.body.unwrap_or_default() },
        "disconnect" => Frame::Disconnect {
            reason: f.reason.unwrap_or(Cow::Borrowed("unknown")),
            // A disconnect without the flag still invites a reconnect.
            reconnect: f.reconnect.unwrap_or(true),
            retry_after_ms: f.retry_after_ms.unwrap_or(0),
        },
        "error" => Frame::Error { code: f.code.unwrap_or(Cow::Borrowed("unknown")) },
        _ => Frame::Other,
    })
}

/// The id to `resume` after: the highest offset seen in the user's
/// partition (`partition:offset`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LastSeen(Option<(u32, i64)>);

impl LastSeen {
    pub fn saw(&mut self, id: &str) {
        let Some((p, o)) = id.split_once(':').and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?))) else {
            return;
        };
        match self.0 {
            Some((lp, lo)) if lp == p && lo >= o => {}
            _ => self.0 = Some((p, o)),
        }
    }

    pub fn resume_frame(&self) -> String {
        let last_id = self.0.map(|(p, o)| format!("{p}:{o}"));
        serde_json::json!({"type": "resume", "last_id": last_id}).to_string()
    }
}

/// When a leaving user closes: once nothing is on its way to it, or its
/// grace ran out.
#[derive(Debug)]
pub struct Leave {
    grace: Duration,
    deadline: Option<Instant>,
}

impl Leave {
    pub fn new(grace: Duration) -> Self {
        Self { grace, deadline: None }
    }

    pub fn start(&mut self, now: Instant) {
        self.deadline.get_or_insert(now + self.grace);
    }

    pub fn started(&self) -> bool {
        self.deadline.is_some()
    }

    pub fn done(&self, now: Instant, pending: u32) -> bool {
        self.deadline.is_some_and(|d| pending == 0 || now >= d)
    }
}

/// Counts a user's open sockets; a second one while one is open is a
/// double session.
struct SocketGuard {
    open: Arc<AtomicU32>,
    shared: Arc<Shared>,
}

impl SocketGuard {
    fn new(open: &Arc<AtomicU32>, shared: &Arc<Shared>) -> Self {
        if open.fetch_add(1, Ordering::AcqRel) > 0 {
            shared.stats().double_sessions += 1;
            tracing::error!("a user opened a second socket while one was open");
        }
        shared.gauges.open_sockets.fetch_add(1, Ordering::Relaxed);
        Self { open: open.clone(), shared: shared.clone() }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.gauges.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
    _guard: SocketGuard,
}

/// A user as the fleet sees it.
#[derive(Debug, Clone)]
pub struct UserSlot {
    pub idx: u32,
    pub leave: CancellationToken,
    pub done: Arc<AtomicBool>,
}

/// Where the user is, for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Online,
    Gone,
}

struct Me {
    shared: Arc<Shared>,
    idx: u32,
    name: String,
    source: Option<IpAddr>,
    lb: usize,
    backoff: Backoff,
    leave: Leave,
    token: CancellationToken,
    sockets: Arc<AtomicU32>,
    phase: Phase,
    last_seen: LastSeen,
}

/// How a session ended, owned.
enum Ended {
    Left,
    Server { at: Instant, next: Next },
}

/// Runs one user until it left (or was stopped); marks `slot.done`.
pub async fn run(shared: Arc<Shared>, slot: UserSlot) {
    let config = &shared.config;
    let lb = (slot.idx as usize) % shared.lbs.len();
    let source =
        (!config.source_ips.is_empty()).then(|| config.source_ips[slot.idx as usize % config.source_ips.len()]);
    let name = shared.ledger().user_name(slot.idx);
    let mut me = Me {
        name,
        idx: slot.idx,
        source,
        lb,
        backoff: Backoff::new(config.backoff_base_ms, config.backoff_max_ms),
        leave: Leave::new(Duration::from_millis(config.leave_grace_ms)),
        token: slot.leave.clone(),
        sockets: Arc::new(AtomicU32::new(0)),
        phase: Phase::Gone,
        last_seen: LastSeen::default(),
        shared,
    };
    me.set_phase(Phase::Connecting);
    let stopped = me.life().await;
    me.set_phase(Phase::Gone);
    {
        let mut ledger = me.shared.ledger();
        if stopped { ledger.ended(me.idx) } else { ledger.left(me.idx) }
    }
    slot.done.store(true, Ordering::Release);
}

impl Me {
    fn set_phase(&mut self, phase: Phase) {
        let g = &self.shared.gauges;
        match self.phase {
            Phase::Connecting => g.connecting.fetch_sub(1, Ordering::Relaxed),
            Phase::Online => g.online.fetch_sub(1, Ordering::Relaxed),
            Phase::Gone => 0,
        };
        match phase {
            Phase::Connecting => g.connecting.fetch_add(1, Ordering::Relaxed),
            Phase::Online => {
                let n = g.online.fetch_add(1, Ordering::Relaxed) + 1;
                g.peak_online.fetch_max(n, Ordering::Relaxed);
                n
            }
            Phase::Gone => 0,
        };
        self.phase = phase;
    }

    fn pending(&self) -> u32 {
        self.shared.ledger().pending_of(self.idx)
    }

    fn leave_done(&mut self) -> bool {
        if self.token.is_cancelled() {
            self.leave.start(Instant::now());
        }
        self.leave.done(Instant::now(), self.pending())
    }

    /// Sleeps, unless the user is told to leave meanwhile.
    async fn pause(&mut self, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.token.cancelled(), if !self.leave.started() => self.leave.start(Instant::now()),
        }
    }

    /// Returns true when the user stopped for good (not a clean leave).
    async fn life(&mut self) -> bool {
        let mut welcomed_before = false;
        // The end of the last session, for the reconnect time.
        let mut broken: Option<(Instant, String)> = None;
        let mut wait = Duration::ZERO;
        loop {
            // Connect (with retries).
            let conn = loop {
                if self.leave_done() {
                    if broken.is_some() {
                        self.shared.stats().reconnects_abandoned += 1;
                    }
                    return false;
                }
                if self.backoff.attempts() >= self.shared.config.max_attempts {
                    self.shared.stats().gave_up += 1;
                    tracing::warn!(user = %self.name, attempts = self.backoff.attempts(), "user gives up connecting");
                    return true;
                }
                self.pause(wait).await;
                if self.leave_done() {
                    continue;
                }
                match self.attempt().await {
                    Ok(conn) => break conn,
                    Err(delay) => wait = delay,
                }
            };
            let mut conn = conn;
            self.backoff.reset();
            self.set_phase(Phase::Online);
            if let Some((at, reason)) = broken.take() {
                let ms = at.elapsed().as_millis() as u64;
                self.shared.stats().reconnected(ms, &reason);
            }
            self.shared.ledger().welcomed(self.idx, crate::now_ms());
            if welcomed_before && conn.ws.send(Message::Text(self.last_seen.resume_frame().into())).await.is_err() {
                self.set_phase(Phase::Connecting);
                broken = Some((Instant::now(), "dropped".into()));
                wait = self.backoff_delay();
                continue;
            }
            welcomed_before = true;
            let ended = self.serve(&mut conn).await;
            drop(conn);
            self.set_phase(Phase::Connecting);
            match ended {
                Ended::Left => return false,
                Ended::Server { next: Next::Stop { reason }, .. } => {
                    Stats::count(&mut self.shared.stats().stopped_by_server, reason);
                    return true;
                }
                Ended::Server { at, next: Next::Reconnect { reason, wait_ms } } => {
                    wait = match wait_ms {
                        Some(ms) => Duration::from_millis(ms).saturating_sub(at.elapsed()),
                        None => self.backoff_delay(),
                    };
                    broken = Some((at, reason));
                }
            }
        }
    }

    fn backoff_delay(&mut self) -> Duration {
        let unit: f64 = rand::rng().random();
        Duration::from_millis(self.backoff.next_ms(unit))
    }

    /// One attempt: route, connect, welcome. On failure, the delay before
    /// the next attempt.
    async fn attempt(&mut self) -> Result<Conn, Duration> {
        let shared = self.shared.clone();
        let _permit = tokio::select! {
            p = shared.gate.acquire() => p.map_err(|_| Duration::from_millis(100))?,
            _ = self.token.cancelled(), if !self.leave.started() => {
                self.leave.start(Instant::now());
                return Err(Duration::ZERO);
            }
        };
        let config = &shared.config;
        let lb = &shared.lbs[self.lb];
        let route =
            match route::fetch(lb, &self.name, self.source, Duration::from_millis(config.route_timeout_ms)).await {
                Ok(route) => route,
                Err(e) => {
                    Stats::count(&mut shared.stats().route_errors, e.kind());
                    return Err(match e {
                        RouteError::Unreachable(_) => {
                            // Fail over at once; back off only once every load
                            // balancer failed in a row.
                            self.lb = (self.lb + 1) % shared.lbs.len();
                            shared.stats().route_failovers += 1;
                            let delay = self.backoff_delay();
                            if (self.backoff.attempts() as usize).is_multiple_of(shared.lbs.len()) {
                                delay
                            } else {
                                Duration::ZERO
                            }
                        }
                        RouteError::Status { retry_after_ms, .. } => {
                            self.backoff_delay().max(Duration::from_millis(retry_after_ms.unwrap_or(0)))
                        }
                        RouteError::BadResponse(_) => self.backoff_delay(),
                    });
                }
            };
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        match tokio::time::timeout(timeout, self.connect(&route)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(kind)) => {
                Stats::count(&mut shared.stats().connect_errors, kind);
                Err(self.backoff_delay())
            }
            Err(_) => {
                Stats::count(&mut shared.stats().connect_errors, "timeout");
                Err(self.backoff_delay())
            }
        }
    }

    /// Opens the WebSocket named by `route` and reads its `welcome`.
    async fn connect(&self, route: &route::Route) -> Result<Conn, String> {
        let url = route.connect_url();
        let (host, port) = ws_authority(&url)?;
        let stream = route::connect_tcp(&host, port, self.source).await.map_err(|e| format!("tcp:{:?}", e.kind()))?;
        let guard = SocketGuard::new(&self.sockets, &self.shared);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(self.shared.ws_config))
            .await
            .map_err(|e| error_kind(&e))?;
        let mut conn = Conn { ws, _guard: guard };
        loop {
            match conn.ws.next().await {
                Some(Ok(Message::Text(text))) => match parse_frame(text.as_str()) {
                    Some(Frame::Welcome { .. }) => return Ok(conn),
                    Some(Frame::Error { code }) => return Err(format!("error_frame:{code}")),
                    _ => return Err("no_welcome".into()),
                },
                Some(Ok(Message::Close(close))) => {
                    return Err(format!("closed:{}", close.map_or(1005, |c| u16::from(c.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("welcome:{}", error_kind(&e))),
                None => return Err("no_welcome".into()),
            }
        }
    }

    /// Reads the session until it ends.
    async fn serve(&mut self, conn: &mut Conn) -> Ended {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                frame = conn.ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(end) = self.on_text(text.as_str()) {
                            let at = Instant::now();
                            self.finish_close(conn, false).await;
                            return Ended::Server { at, next: end };
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        let at = Instant::now();
                        let code = close.map_or(1005, |c| u16::from(c.code));
                        self.finish_close(conn, false).await;
                        return Ended::Server { at, next: next_after(SessionEnd::Close { code }) };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        return Ended::Server { at: Instant::now(), next: next_after(SessionEnd::Dropped) };
                    }
                },
                _ = self.token.cancelled(), if !self.leave.started() => self.leave.start(Instant::now()),
                _ = tick.tick(), if self.leave.started() => {
                    if self.leave_done() {
                        self.finish_close(conn, true).await;
                        return Ended::Left;
                    }
                }
            }
        }
    }

    /// Handles one text frame; `Some` when it ends the session.
    fn on_text(&mut self, text: &str) -> Option<Next> {
        match parse_frame(text) {
            Some(Frame::Message { id, body }) => {
                self.last_seen.saw(&id);
                self.shared.ledger().received(self.idx, &id, &body, crate::now_ms());
                None
            }
            Some(Frame::Disconnect { reason, reconnect, retry_after_ms }) => {
                Some(next_after(SessionEnd::Disconnect { reason: &reason, reconnect, retry_after_ms }))
            }
            Some(Frame::Error { code }) => {
                Stats::count(&mut self.shared.stats().error_frames, code);
                None
            }
            Some(Frame::Welcome { .. }) => {
                Stats::count(&mut self.shared.stats().error_frames, "second_welcome");
                None
            }
            Some(Frame::Other) => None,
            None => {
                self.shared.stats().unparsed_frames += 1;
                None
            }
        }
    }

    /// Completes the closing handshake (bounded), still reading messages
    /// that arrive meanwhile. `initiate`: this side closes first.
    async fn finish_close(&mut self, conn: &mut Conn, initiate: bool) {
        if initiate {
            let _ = conn.ws.close(None).await;
        }
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(m)) = conn.ws.next().await {
                if let Message::Text(text) = m
                    && let Some(Frame::Message { id, body }) = parse_frame(text.as_str())
                {
                    self.last_seen.saw(&id);
                    self.shared.ledger().received(self.idx, &id, &body, crate::now_ms());
                }
            }
        })
        .await;
    }
}

/// `host` and `port` of a `ws://` URL.
pub fn ws_authority(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| if url.starts_with("wss://") { "wss_unsupported".to_owned() } else { "bad_url".to_owned() })?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let lb = route::LbAddr::parse(authority).map_err(|_| "bad_url".to_owned())?;
    Ok((lb.host, lb.port))
}

/// A short kind for a WebSocket error: `409:not_owner`, `io:connectionreset`…
pub fn error_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            let code = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v.get("error").and_then(|c| c.as_str()).map(str::to_owned))
                .unwrap_or_default();
            format!("{}:{code}", response.status().as_u16())
        }
        tungstenite::Error::Io(io) => format!("io:{:?}", io.kind()).to_ascii_lowercase(),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(_) => "protocol".into(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_the_contract() {
        assert_eq!(
            parse_frame(r#"{"type":"welcome","node_id":"socket-0","user":"u1","partition":17,"epoch":42}"#),
            Some(Frame::Welcome { node_id: "socket-0".into(), partition: Some(17) })
        );
        assert_eq!(
            parse_frame(r#"{"type":"message","id":"17:4711","from":"u2","body":"{\"a\":1}","ts_ms":1}"#),
            Some(Frame::Message { id: "17:4711".into(), body: "{\"a\":1}".into() })
        );
        assert_eq!(
            parse_frame(r#"{"type":"disconnect","reason":"rebalance","reconnect":true,"retry_after_ms":120}"#),
            Some(Frame::Disconnect { reason: "rebalance".into(), reconnect: true, retry_after_ms: 120 })
        );
        assert_eq!(
            parse_frame(r#"{"type":"error","code":"bad_frame","message":"x"}"#),
            Some(Frame::Error { code: "bad_frame".into() })
        );
        assert_eq!(parse_frame(r#"{"type":"ack","client_msg_id":"c","id":"1:2"}"#), Some(Frame::Other));
        assert_eq!(parse_frame(r#"{"type":"message"}"#), None, "a message needs an id");
        assert_eq!(parse_frame("nope"), None);
        assert_eq!(parse_frame(r#"{"no":"type"}"#), None);
    }

    #[test]
    fn resume_names_the_highest_offset_seen() {
        let mut seen = LastSeen::default();
        assert_eq!(seen.resume_frame(), r#"{"last_id":null,"type":"resume"}"#);
        seen.saw("3:10");
        seen.saw("3:12");
        seen.saw("3:11");
        seen.saw("garbage");
        let v: serde_json::Value = serde_json::from_str(&seen.resume_frame()).unwrap();
        assert_eq!(v, serde_json::json!({"type":"resume","last_id":"3:12"}));
        // Another partition (the partition count changed) starts over.
        seen.saw("5:1");
        assert_eq!(seen, LastSeen(Some((5, 1))));
    }

    #[test]
    fn leaving_waits_for_pending_messages_within_the_grace() {
        let t0 = Instant::now();
        let mut leave = Leave::new(Duration::from_secs(3));
        assert!(!leave.done(t0, 0), "not leaving yet");
        leave.start(t0);
        leave.start(t0 + Duration::from_secs(10)); // the first start counts
        assert!(leave.started());
        assert!(!leave.done(t0 + Duration::from_secs(1), 2));
        assert!(leave.done(t0 + Duration::from_secs(1), 0));
        assert!(leave.done(t0 + Duration::from_secs(3), 2));
    }

    #[test]
    fn websocket_urls() {
        assert_eq!(ws_authority("ws://127.0.0.1:8080/ws?token=a.b"), Ok(("127.0.0.1".into(), 8080)));
        assert_eq!(ws_authority("ws://node/ws"), Ok(("node".into(), 80)));
        assert_eq!(ws_authority("wss://node/ws"), Err("wss_unsupported".into()));
        assert_eq!(ws_authority("http://node/ws"), Err("bad_url".into()));
    }
}
