//! One simulated user's life: ask a load balancer for its route, connect
//! with the token, read its messages (deduped by id in the ledger), follow
//! `disconnect` and close codes to reconnect (`resume` with the last id it
//! saw), and leave cleanly when told to. It never opens a socket before the
//! previous one is closed; a per-user socket count checks that.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use rtc_core::protocol::{MessageId, ServerFrame, is_new, resume_point};
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

/// Where to resume: the highest id seen (ids of the user's partition only
/// grow, so one comparison dedupes: `rtc_core::protocol::is_new`), and the
/// first welcome's `live_from` for a user that has seen none yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LastSeen {
    last: Option<MessageId>,
    live_from: Option<MessageId>,
}

impl LastSeen {
    /// Notes `id`; false when it is not new (at or below the last one).
    pub fn saw(&mut self, id: MessageId) -> bool {
        let new = is_new(self.last, id);
        if new {
            self.last = Some(id);
        }
        new
    }

    /// Notes a welcome's `live_from` (only the first session's counts).
    pub fn welcomed(&mut self, live_from: MessageId) {
        self.live_from.get_or_insert(live_from);
    }

    /// The connect URL's query addition: `&last_id=…`, `&from_id=…` or nothing.
    pub fn query(&self) -> String {
        resume_point(self.last, self.live_from).map(|(k, id)| format!("&{k}={id}")).unwrap_or_default()
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
            Ok(Ok((conn, live_from))) => {
                if let Some(live_from) = live_from {
                    self.last_seen.welcomed(live_from);
                }
                Ok(conn)
            }
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

    /// Opens the WebSocket named by `route` and reads its `welcome` (and
    /// the session's live start).
    async fn connect(&self, route: &route::Route) -> Result<(Conn, Option<MessageId>), String> {
        let url = format!("{}{}", route.connect_url(), self.last_seen.query());
        let (host, port) = ws_authority(&url)?;
        let stream = route::connect_tcp(&host, port, self.source).await.map_err(|e| format!("tcp:{:?}", e.kind()))?;
        let guard = SocketGuard::new(&self.sockets, &self.shared);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(self.shared.ws_config))
            .await
            .map_err(|e| error_kind(&e))?;
        let mut conn = Conn { ws, _guard: guard };
        loop {
            match conn.ws.next().await {
                Some(Ok(Message::Text(text))) => match ServerFrame::parse(text.as_str()) {
                    Ok(ServerFrame::Welcome { live_from, .. }) => return Ok((conn, live_from)),
                    Ok(ServerFrame::Error { code, .. }) => return Err(format!("error_frame:{code}")),
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
        match ServerFrame::parse(text) {
            Ok(ServerFrame::Message { id, body, .. }) => {
                self.received(id, &body);
                None
            }
            Ok(ServerFrame::Resumed { recovered: false, reason, .. }) => {
                let reason = reason.map_or("unknown", |r| r.as_str());
                Stats::count(&mut self.shared.stats().unrecovered_resumes, reason);
                None
            }
            Ok(ServerFrame::Disconnect { reason, reconnect, retry_after_ms }) => {
                Some(next_after(SessionEnd::Disconnect { reason: reason.as_str(), reconnect, retry_after_ms }))
            }
            Ok(ServerFrame::Error { code, .. }) => {
                Stats::count(&mut self.shared.stats().error_frames, code);
                None
            }
            Ok(ServerFrame::Welcome { .. }) => {
                Stats::count(&mut self.shared.stats().error_frames, "second_welcome");
                None
            }
            Ok(ServerFrame::Resumed { .. } | ServerFrame::Ack { .. }) => None,
            Err(_) => {
                self.shared.stats().unparsed_frames += 1;
                None
            }
        }
    }

    /// A message: to the ledger (which checks duplicates and order as the
    /// server sent them), and the last id moves on when it is new.
    fn received(&mut self, id: MessageId, body: &str) {
        self.last_seen.saw(id);
        self.shared.ledger().received(self.idx, &id.to_string(), body, crate::now_ms());
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
                    && let Ok(ServerFrame::Message { id, body, .. }) = ServerFrame::parse(text.as_str())
                {
                    self.received(id, &body);
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
    fn reconnects_with_the_highest_id_seen() {
        let mut seen = LastSeen::default();
        assert_eq!(seen.query(), "");
        let id = |s: &str| s.parse::<MessageId>().unwrap();
        seen.welcomed(id("3:7"));
        seen.welcomed(id("3:9"));
        assert_eq!(seen.query(), "&from_id=3:7", "nothing seen yet: from the first live start");
        assert!(seen.saw(id("3:10")));
        assert!(seen.saw(id("3:12")));
        assert!(!seen.saw(id("3:11")), "below the last: not new");
        assert!(!seen.saw(id("3:12")), "the same: not new");
        assert_eq!(seen.query(), "&last_id=3:12");
        // Another partition (the partition count changed) starts over.
        assert!(seen.saw(id("5:1")));
        assert_eq!(seen.query(), "&last_id=5:1");
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
