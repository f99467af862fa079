//! The client handle, its events, and the one task that owns the
//! connection: route, connect, serve the session, reconnect.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use rtc_core::protocol::{ClientFrame, Cursor, MessageId, RecentSends, ResumeFailure, ServerFrame};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, SessionEnd};
use crate::config::ClientConfig;
use crate::conn::{self, Welcome, Ws};
use crate::error::{ClientError, ConfigError, RouteError, SendError};
use crate::route::Router;

/// How long a closing session waits for the other side's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not connected and not trying: only before the connection task first
    /// runs (the first event is `Connecting`).
    Disconnected,
    /// Asking a load balancer, connecting, or waiting to reconnect.
    Connecting,
    /// A session is open (its `welcome` arrived): messages flow and
    /// [`RtcClient::send`] works.
    Connected,
    /// For good: [`RtcClient::close`], a dropped handle or [`Events`], or
    /// the server said not to come back (close code 4500+ or
    /// `disconnect{reconnect:false}`).
    Closed,
}

impl State {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Closed => "closed",
        }
    }
}

/// What the client tells the application, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The state changed (also readable any time with [`RtcClient::state`]).
    State(State),
    /// A message for the user, new to this client: ids only grow (within
    /// the user's partition) and none comes twice, across reconnects too.
    Message { id: MessageId, from: Option<String>, body: String, ts_ms: i64 },
    /// A reconnect resumed after the last id: `recovered` when every
    /// message in between was delivered (before this event); otherwise
    /// `reason` says why not and the application reloads its state from its
    /// own source of truth. Live messages follow either way.
    Recovered { recovered: bool, reason: Option<ResumeFailure> },
    /// A session ended; the client reconnects in `reconnect_in` (`None`:
    /// it does not, a `State(Closed)` follows).
    SessionEnded { end: SessionEnd, reconnect_in: Option<Duration> },
    /// Something failed; the client handles it (retries, backs off) and
    /// goes on.
    Error(ClientError),
}

/// The client's events, bounded ([`ClientConfig::event_capacity`]). Read
/// them with [`Events::recv`] or as a [`Stream`].
///
/// When the application does not read, the buffer fills and the client
/// stops reading its socket: nothing is dropped. The server then closes the
/// session as `slow` (or idle) and the client, once the application reads
/// again, reconnects with its last id and gets the rest replayed from the
/// log. A message counts as delivered (and moves the resume point) when it
/// enters this buffer. Dropping `Events` closes the client. The stream ends
/// after `State(Closed)`.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed and every event was
    /// read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is buffered.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A handle to one user's connection. Cheap to clone; the connection
/// closes when the last clone is dropped (or on [`RtcClient::close`]).
#[derive(Debug, Clone)]
pub struct RtcClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    user: String,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    close: CancellationToken,
    /// `client_msg_id`s handed out: `<prefix>-1`, `<prefix>-2`… The random
    /// prefix keeps them unique per sender across client instances (a
    /// recipient drops a pair it saw as a retried send's second copy).
    send_prefix: String,
    sends: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close.cancel();
    }
}

type Reply = oneshot::Sender<Result<MessageId, SendError>>;

#[derive(Debug)]
enum Command {
    Send { to: String, body: String, client_msg_id: String, reply: Reply },
}

impl RtcClient {
    /// Starts a client for `config.user`: one task that asks the load
    /// balancers for the route, connects, delivers events, and reconnects
    /// until closed. Returns at once; the first event is
    /// `State(Connecting)`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn connect(config: ClientConfig) -> Result<(RtcClient, Events), ConfigError> {
        config.validate()?;
        let router =
            Router::new(&config.route_urls, config.route_auth.as_deref(), config.source_ip, config.connect_timeout)?;
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(State::Disconnected);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let close = CancellationToken::new();
        let task = Task {
            user: config.user.clone(),
            router,
            source_ip: config.source_ip,
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            permits: config.connect_permits.clone(),
            cursor: Cursor::new(config.last_id, config.live_from),
            backoff: Backoff::new(config.min_reconnect_delay, config.max_reconnect_delay),
            out: Out { events: events_tx, state: state_tx, close: close.clone() },
            commands: commands_rx,
            pending: Pending::default(),
            recent_sends: RecentSends::default(),
        };
        tokio::spawn(task.run());
        let send_prefix = format!("{:012x}", rand::random::<u64>() >> 16);
        let inner = Inner {
            user: config.user,
            commands: commands_tx,
            state: state_rx,
            close,
            send_prefix,
            sends: AtomicU64::new(0),
        };
        Ok((RtcClient { inner: Arc::new(inner) }, Events { rx: events_rx }))
    }

    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.inner.state.borrow()
    }

    /// Closes the client: the open session is closed (code 1000), sends in
    /// flight fail with [`SendError::Closed`], no reconnect follows.
    /// Idempotent; returns at once (see [`RtcClient::closed`]).
    pub fn close(&self) {
        self.inner.close.cancel();
    }

    /// Waits until the client is closed.
    pub async fn closed(&self) {
        let mut state = self.inner.state.clone();
        let _ = state.wait_for(|s| *s == State::Closed).await;
    }

    /// Sends `body` to user `to`; resolves with the id the message got in
    /// the recipient's partition once the server acknowledges it. Fails at
    /// once when no session is open, and with
    /// [`SendError::ConnectionLost`] when the session ends first (the
    /// caller may retry; the message may then arrive twice, with two ids).
    pub async fn send(&self, to: impl Into<String>, body: impl Into<String>) -> Result<MessageId, SendError> {
        match self.state() {
            State::Connected => {}
            State::Closed => return Err(SendError::Closed),
            State::Disconnected | State::Connecting => return Err(SendError::NotConnected),
        }
        let n = self.inner.sends.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply, answer) = oneshot::channel();
        let command = Command::Send {
            to: to.into(),
            body: body.into(),
            client_msg_id: format!("{}-{n}", self.inner.send_prefix),
            reply,
        };
        self.inner.commands.send(command).map_err(|_| SendError::Closed)?;
        answer.await.unwrap_or(Err(SendError::Closed))
    }
}

/// The task's outputs: events, state, and the close signal.
struct Out {
    events: mpsc::Sender<Event>,
    state: watch::Sender<State>,
    close: CancellationToken,
}

impl Out {
    /// Queues `event`, waiting while the application's buffer is full;
    /// false when the client is closing (dropped `Events` closes it).
    async fn emit(&self, event: Event) -> bool {
        tokio::select! {
            biased;
            _ = self.close.cancelled() => false,
            sent = self.events.send(event) => {
                if sent.is_err() {
                    self.close.cancel();
                }
                sent.is_ok()
            }
        }
    }

    /// A last event: waits for room unless the client is closing, then
    /// queues it only if there is room.
    async fn emit_last(&self, event: Event) {
        if !self.close.is_cancelled() {
            let permit = tokio::select! {
                biased;
                _ = self.close.cancelled() => None,
                permit = self.events.reserve() => permit.ok(),
            };
            if let Some(permit) = permit {
                permit.send(event);
                return;
            }
        }
        let _ = self.events.try_send(event);
    }

    async fn set_state(&self, state: State) -> bool {
        if self.state.send_replace(state) == state {
            return true;
        }
        self.emit(Event::State(state)).await
    }
}

/// What a text frame means for the session.
enum Flow {
    Go,
    /// The client is closing.
    Stop,
    Disconnect(SessionEnd),
}

struct Task {
    user: String,
    router: Router,
    source_ip: Option<std::net::IpAddr>,
    connect_timeout: Duration,
    read_timeout: Duration,
    permits: Option<Arc<Semaphore>>,
    cursor: Cursor,
    backoff: Backoff,
    out: Out,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: Pending,
    recent_sends: RecentSends,
}

/// The wait a failed attempt asks for.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// The server's `retry_after_ms`: follow it.
    Exactly(Duration),
    /// Back off, but at least this long (`Retry-After`, or zero).
    AtLeast(Duration),
}

fn unit() -> f64 {
    rand::random::<f64>()
}

impl Task {
    async fn run(mut self) {
        let mut wait = Duration::ZERO;
        let close = self.out.close.clone();
        // The session whose end closes the client, if one was open.
        let last_end = loop {
            if !self.out.set_state(State::Connecting).await || !self.pause(wait).await {
                break None;
            }
            let opened = tokio::select! {
                biased;
                _ = close.cancelled() => break None,
                opened = self.attempt() => opened,
            };
            let (mut ws, welcome) = match opened {
                Ok(open) => open,
                Err(retry) => {
                    // A server's `retry_after_ms` is followed as is (up to
                    // the backoff's cap), as a `disconnect`'s is: it knows
                    // when things will be ready, and jitters it. Otherwise
                    // back off, at least as long as `Retry-After` says.
                    wait = match retry {
                        Retry::Exactly(d) => d.min(self.backoff.cap()),
                        Retry::AtLeast(d) => self.backoff.next(unit()).max(d),
                    };
                    tracing::debug!(user = %self.user, ?wait, step = self.backoff.step(), "connect failed; backing off");
                    continue;
                }
            };
            self.backoff.reset();
            self.cursor.welcomed(welcome.live_from);
            tracing::debug!(user = %self.user, node = %welcome.node_id, partition = welcome.partition,
                epoch = welcome.epoch, "session open");
            let (end, ended_at) = if self.out.set_state(State::Connected).await {
                self.serve(&mut ws).await
            } else {
                close_ws(&mut ws).await;
                (SessionEnd::ClientClosed, Instant::now())
            };
            drop(ws);
            // No send may wait on a session that is gone: the state changes
            // first (its event follows `SessionEnded`).
            self.out.state.send_replace(State::Connecting);
            let failed = if end == SessionEnd::ClientClosed { SendError::Closed } else { SendError::ConnectionLost };
            self.pending.fail_all(&failed);
            self.fail_queued(&failed);
            let delay = end.reconnect_delay(&mut self.backoff, unit());
            tracing::debug!(user = %self.user, ?end, ?delay, "session ended");
            match delay {
                Some(delay) => {
                    let ended = Event::SessionEnded { end, reconnect_in: Some(delay) };
                    if !self.out.emit(ended).await || !self.out.emit(Event::State(State::Connecting)).await {
                        break None;
                    }
                    // retry_after counts from the disconnect frame.
                    wait = delay.saturating_sub(ended_at.elapsed());
                }
                None => break Some(end),
            }
        };
        self.out.state.send_replace(State::Closed);
        self.pending.fail_all(&SendError::Closed);
        self.fail_queued(&SendError::Closed);
        self.commands.close();
        self.fail_queued(&SendError::Closed);
        if let Some(end) = last_end {
            self.out.emit_last(Event::SessionEnded { end, reconnect_in: None }).await;
        }
        self.out.emit_last(Event::State(State::Closed)).await;
        tracing::debug!(user = %self.user, "client closed");
    }

    /// Sleeps `wait`; false when the client closes meanwhile.
    async fn pause(&self, wait: Duration) -> bool {
        if self.out.close.is_cancelled() {
            return false;
        }
        if wait.is_zero() {
            return true;
        }
        tokio::select! {
            biased;
            _ = self.out.close.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// Sends queued before the session ended never reached it.
    fn fail_queued(&mut self, error: &SendError) {
        while let Ok(Command::Send { reply, .. }) = self.commands.try_recv() {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// One attempt: a route (each load balancer in turn; an unreachable one
    /// passes to the next at once), then the socket and its welcome. Errors
    /// are reported as events; `Err` carries how long the server asked the
    /// client to wait.
    async fn attempt(&mut self) -> Result<(Ws, Welcome), Retry> {
        let _permit = match &self.permits {
            Some(permits) => permits.clone().acquire_owned().await.ok(),
            None => None,
        };
        let mut route = None;
        for i in 0..self.router.len() {
            let index = self.router.nth(i);
            let error = match self.router.fetch(index, &self.user).await {
                Ok(answer) => {
                    self.router.stay_with(index);
                    route = Some(answer);
                    break;
                }
                Err(error) => error,
            };
            let unreachable = matches!(error, RouteError::Unreachable(_));
            let retry = match &error {
                RouteError::Status { retry_after: Some(d), retry_after_exact: true, .. } => Retry::Exactly(*d),
                RouteError::Status { retry_after, .. } => Retry::AtLeast(retry_after.unwrap_or_default()),
                _ => Retry::AtLeast(Duration::ZERO),
            };
            let url = self.router.base(index).to_owned();
            if !self.out.emit(Event::Error(ClientError::Route { url, error })).await {
                return Err(Retry::AtLeast(Duration::ZERO));
            }
            if !unreachable {
                // It answered: the others would say the same (they share
                // the assignment); back off, then ask it again.
                self.router.stay_with(index);
                return Err(retry);
            }
        }
        let Some(route) = route else { return Err(Retry::AtLeast(Duration::ZERO)) };
        let url = format!("{}{}", route.connect_url(), self.cursor.query());
        let error = match tokio::time::timeout(self.connect_timeout, conn::open_session(&url, self.source_ip)).await {
            Ok(Ok(open)) => return Ok(open),
            Ok(Err(error)) => error,
            Err(_) => crate::error::ConnectError::Timeout,
        };
        let error = ClientError::Connect { node_id: route.node_id, url: route.url, error };
        self.out.emit(Event::Error(error)).await;
        Err(Retry::AtLeast(Duration::ZERO))
    }

    /// Serves an open session until it ends; returns how, and when (for a
    /// `disconnect`, when it arrived: `retry_after_ms` counts from then).
    async fn serve(&mut self, ws: &mut Ws) -> (SessionEnd, Instant) {
        let close = self.out.close.clone();
        let mut quiet_until = Instant::now() + self.read_timeout;
        loop {
            let frame = tokio::select! {
                _ = close.cancelled() => {
                    close_ws(ws).await;
                    return (SessionEnd::ClientClosed, Instant::now());
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        close_ws(ws).await;
                        return (SessionEnd::ClientClosed, Instant::now());
                    };
                    if let Err(e) = self.write(ws, command).await {
                        return (SessionEnd::Lost(e), Instant::now());
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(quiet_until) => {
                    let lost = format!("nothing heard for {:?}", self.read_timeout);
                    return (SessionEnd::Lost(lost), Instant::now());
                }
                frame = ws.next() => frame,
            };
            quiet_until = Instant::now() + self.read_timeout;
            match frame {
                Some(Ok(Message::Text(text))) => match self.on_text(text.as_str()).await {
                    Flow::Go => {}
                    Flow::Stop => {
                        close_ws(ws).await;
                        return (SessionEnd::ClientClosed, Instant::now());
                    }
                    Flow::Disconnect(end) => {
                        let at = Instant::now();
                        self.finish_close(ws).await;
                        return (end, at);
                    }
                },
                Some(Ok(Message::Close(frame))) => {
                    let at = Instant::now();
                    let (code, reason) =
                        frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    self.finish_close(ws).await;
                    return (SessionEnd::Closed { code, reason }, at);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return (SessionEnd::Lost(e.to_string()), Instant::now()),
                None => return (SessionEnd::Lost("connection ended without a close frame".into()), Instant::now()),
            }
        }
    }

    /// Writes a `send` frame; its reply waits for the answer.
    async fn write(&mut self, ws: &mut Ws, command: Command) -> Result<(), String> {
        let Command::Send { to, body, client_msg_id, reply } = command;
        if reply.is_closed() {
            // The caller gave up before it was sent: do not send it.
            return Ok(());
        }
        let text = ClientFrame::Send { to, body, client_msg_id: Some(client_msg_id.clone()) }.to_json();
        match tokio::time::timeout(self.connect_timeout, ws.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => {
                self.pending.push(client_msg_id, reply);
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = reply.send(Err(SendError::ConnectionLost));
                Err(format!("write failed: {e}"))
            }
            Err(_) => {
                let _ = reply.send(Err(SendError::ConnectionLost));
                Err(format!("write not done within {:?}", self.connect_timeout))
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let frame = match ServerFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "ignoring a frame that does not parse");
                return Flow::Go;
            }
        };
        let event = match frame {
            ServerFrame::Message { id, from, body, ts_ms, client_msg_id } => {
                if !self.cursor.accept(id) {
                    tracing::trace!(user = %self.user, %id, "dropping a message already delivered");
                    return Flow::Go;
                }
                if !self.recent_sends.first_copy(from.as_deref(), client_msg_id.as_deref()) {
                    tracing::debug!(user = %self.user, %id, "dropping the second copy of a retried send");
                    return Flow::Go;
                }
                Event::Message { id, from: from.map(|f| f.into_owned()), body: body.into_owned(), ts_ms }
            }
            ServerFrame::Resumed { recovered, reason, .. } => {
                self.cursor.resumed(recovered);
                Event::Recovered { recovered, reason }
            }
            ServerFrame::Ack { client_msg_id, id } => {
                if let Some(client_msg_id) = client_msg_id {
                    self.pending.ack(&client_msg_id, id);
                }
                return Flow::Go;
            }
            ServerFrame::Disconnect { reason, reconnect, retry_after_ms, through } => {
                self.cursor.disconnected(through);
                let retry_after = Duration::from_millis(retry_after_ms);
                return Flow::Disconnect(SessionEnd::Disconnect { reason, reconnect, retry_after });
            }
            ServerFrame::Error { code, message, client_msg_id } => {
                let (code, message) = (code.into_owned(), message.into_owned());
                self.pending.refused(client_msg_id.as_deref(), code.clone(), message.clone());
                Event::Error(ClientError::Server { code, message })
            }
            ServerFrame::Welcome { .. } => {
                tracing::warn!(user = %self.user, "ignoring a second welcome");
                return Flow::Go;
            }
        };
        if self.out.emit(event).await { Flow::Go } else { Flow::Stop }
    }

    /// After the server said goodbye: reads until its close completes
    /// (bounded), still delivering any message that arrives.
    async fn finish_close(&mut self, ws: &mut Ws) {
        let deadline = Instant::now() + CLOSE_HANDSHAKE;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
            if let Message::Text(text) = frame
                && let Flow::Stop = self.on_text(text.as_str()).await
            {
                return;
            }
        }
    }
}

/// Closes a session from this side (1000), bounded.
async fn close_ws(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Sends waiting for their answer. Each `send` gets exactly one: an `ack`
/// naming its `client_msg_id`, or an `error` frame, which names none
/// (`rate_limited`, `bad_frame`, `too_large`, `send_failed`). So once as
/// many errors arrived as sends are still waiting, those sends are the
/// refused ones; until then an error cannot be pinned on one of them.
#[derive(Debug, Default)]
struct Pending {
    waiting: Vec<(String, Reply)>,
    errors: Vec<(String, String)>,
}

impl Pending {
    fn push(&mut self, client_msg_id: String, reply: Reply) {
        self.waiting.push((client_msg_id, reply));
    }

    fn ack(&mut self, client_msg_id: &str, id: MessageId) {
        if let Some(i) = self.waiting.iter().position(|(c, _)| c == client_msg_id) {
            let (_, reply) = self.waiting.remove(i);
            let _ = reply.send(Ok(id));
        }
        self.settle();
    }

    /// A refusal: of the send it names, or (from a node that does not name
    /// it) of one of the sends still waiting once no other can be.
    fn refused(&mut self, client_msg_id: Option<&str>, code: String, message: String) {
        if let Some(i) = client_msg_id.and_then(|c| self.waiting.iter().position(|(w, _)| w == c)) {
            let (_, reply) = self.waiting.remove(i);
            let _ = reply.send(Err(SendError::Refused { code, message }));
            return;
        }
        self.errors.push((code, message));
        self.settle();
    }

    fn settle(&mut self) {
        if self.errors.is_empty() || self.errors.len() < self.waiting.len() {
            return;
        }
        for ((_, reply), (code, message)) in self.waiting.drain(..).zip(self.errors.drain(..)) {
            let _ = reply.send(Err(SendError::Refused { code, message }));
        }
        self.errors.clear();
    }

    fn fail_all(&mut self, error: &SendError) {
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        self.errors.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(pending: &mut Pending, id: &str) -> oneshot::Receiver<Result<MessageId, SendError>> {
        let (tx, rx) = oneshot::channel();
        pending.push(id.into(), tx);
        rx
    }

    #[test]
    fn acks_resolve_their_own_send() {
        let mut p = Pending::default();
        let mut a = waiting(&mut p, "c-1");
        let mut b = waiting(&mut p, "c-2");
        p.ack("c-2", MessageId::new(3, 9));
        assert_eq!(b.try_recv().unwrap(), Ok(MessageId::new(3, 9)));
        assert!(a.try_recv().is_err(), "c-1 still waits");
        p.ack("c-7", MessageId::new(3, 10));
        assert!(a.try_recv().is_err(), "an unknown id resolves nothing");
        p.ack("c-1", MessageId::new(3, 11));
        assert_eq!(a.try_recv().unwrap(), Ok(MessageId::new(3, 11)));
    }

    #[test]
    fn an_error_is_pinned_on_a_send_once_no_other_can_have_caused_it() {
        let mut p = Pending::default();
        let mut a = waiting(&mut p, "c-1");
        let mut b = waiting(&mut p, "c-2");
        p.refused(None, "rate_limited".into(), "slow down".into());
        assert!(a.try_recv().is_err() && b.try_recv().is_err(), "either could be the refused one");
        p.ack("c-1", MessageId::new(1, 1));
        assert_eq!(a.try_recv().unwrap(), Ok(MessageId::new(1, 1)));
        assert_eq!(
            b.try_recv().unwrap(),
            Err(SendError::Refused { code: "rate_limited".into(), message: "slow down".into() })
        );
        // One send waiting: its error is its own at once.
        let mut c = waiting(&mut p, "c-3");
        p.refused(None, "send_failed".into(), "kafka".into());
        assert!(matches!(c.try_recv().unwrap(), Err(SendError::Refused { code, .. }) if code == "send_failed"));
        // An error with nothing waiting is forgotten, not owed by the next send.
        p.refused(None, "bad_frame".into(), "?".into());
        let mut d = waiting(&mut p, "c-4");
        assert!(d.try_recv().is_err());
        p.fail_all(&SendError::ConnectionLost);
        assert_eq!(d.try_recv().unwrap(), Err(SendError::ConnectionLost));
    }

    #[test]
    fn an_error_naming_its_send_resolves_that_send_at_once() {
        let mut p = Pending::default();
        let mut a = waiting(&mut p, "c-1");
        let mut b = waiting(&mut p, "c-2");
        p.refused(Some("c-2"), "rate_limited".into(), "slow down".into());
        assert_eq!(
            b.try_recv().unwrap(),
            Err(SendError::Refused { code: "rate_limited".into(), message: "slow down".into() })
        );
        assert!(a.try_recv().is_err(), "c-1 still waits for its own answer");
        p.ack("c-1", MessageId::new(1, 1));
        assert_eq!(a.try_recv().unwrap(), Ok(MessageId::new(1, 1)));
    }
}
