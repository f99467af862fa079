//! One WebSocket session: replays what the client missed, writes the user's
//! live messages, reads the client's frames, keeps the connection alive,
//! and closes when told to.
//!
//! Order on the wire: `welcome`; with a last id, the replayed messages and
//! `resumed`; then live messages. Ids only grow: a live message at or below
//! what the session already wrote (or the client's last id) is dropped, so a
//! message replayed and also received live is written once. Every write has
//! a deadline; a client that does not read is closed as `slow` and resumes
//! from its last id.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use rtc_core::protocol::{
    ClientFrame, CloseReason, ConnectRefusal, InvalidFrame, MessageId, ResumeFailure, ServerFrame, parse_client_frame,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::catchup::{CatchUp, Outcome, ReplayReceiver, ReplaySender, Request, replay_channel};
use crate::config::{Limits, Timing};
use crate::hub::{CloseCmd, Delivery, Held, Registration};
use crate::mailbox::Mailbox;
use crate::metrics::{Evicted, KafkaFailure};
use crate::takeover::Takeovers;
use crate::upgrade::WebSocket;

/// What a session uses of the node.
pub struct SessionContext {
    pub node_id: String,
    pub topic: String,
    pub timing: Timing,
    pub limits: Limits,
    pub hub: Arc<crate::hub::Hub>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub producer: rdkafka::producer::FutureProducer,
    pub catchup: CatchUp,
    pub takeovers: Arc<Takeovers>,
}

/// A user admitted by the WebSocket handler.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub user: String,
    pub partition: u32,
    pub epoch: u64,
    /// `last_id` or `from_id` of the connect URL, as the client sent it.
    pub resume: Option<Resume>,
}

/// Where a client asked to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub from: ResumeFrom,
    /// The id as the client sent it (echoed in `resumed`).
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// `last_id`: everything after this id.
    After,
    /// `from_id`: everything from this id on (a welcome's `live_from`).
    At,
}

/// A client whose replay could not be read in time resumes again after
/// this, plus as much again at random (so a crowd spreads out).
const UNAVAILABLE_RETRY_MS: u64 = 1000;

/// How long a closing session waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

type SendOutcome = (Option<String>, Result<MessageId, String>);
type PendingSend = Pin<Box<dyn Future<Output = SendOutcome> + Send>>;

/// Where the session is in its order of frames.
enum Phase {
    /// Opened without `last_id`: live messages wait this long for a
    /// `resume` as the client's first frame.
    FirstFrame(tokio::time::Instant),
    /// Writing the replay; live messages wait in the queue. Boxed: only a
    /// resuming session holds one, not every idle session's future.
    Replaying(Box<Replay>),
    Live,
}

/// A replay being written: the records, then the outcome, come on `rx`.
struct Replay {
    resume: Resume,
    replayed: u64,
    rx: ReplayReceiver,
    started: Instant,
}

/// Why a write did not happen.
enum WriteError {
    /// The connection failed or closed.
    Gone,
    /// The client did not take the frame within the write deadline.
    Stuck,
}

/// Why the loop ended: a close order, or the client went away.
enum Ended {
    Closed(CloseReason),
    ClientGone,
}

impl From<WriteError> for Ended {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Gone => Ended::ClientGone,
            WriteError::Stuck => Ended::Closed(CloseReason::Slow),
        }
    }
}

struct Session {
    node: Arc<SessionContext>,
    user: Admitted,
    /// Highest offset of the user's partition this client has: written
    /// here, or named as its last id.
    delivered_through: Option<i64>,
    /// The consumer's position when the session registered: live records
    /// start here, a replay ends here.
    live_from: i64,
    last_heard: Instant,
    write_timeout: Duration,
    /// Per-session `send` limits, made on the first `send` (idle sessions
    /// stay small).
    send_limits: Option<Box<SendLimits>>,
    /// Welcomed this long after this node took the user's partition over
    /// from another node: the hand-off reconnect time, recorded if the
    /// client resumes (see `crate::takeover`).
    reconnect_after: Option<Duration>,
}

pub async fn run(mut ws: WebSocket, node: Arc<SessionContext>, mut user: Admitted, seat: crate::hub::Seat) {
    let write_timeout = Duration::from_millis(node.timing.write_timeout_ms.max(1));
    let registration = node.hub.register(&user.user, user.partition);
    // Registered (or refused): the seat can go.
    drop(seat);
    let Ok(Registration { id, live_from, mailbox }) = registration else {
        // Released between admission and now: never a session here.
        node.metrics.refused.increment(ConnectRefusal::NotOwner);
        let cmd = CloseCmd::new(CloseReason::Rebalance, 0);
        let _ = tokio::time::timeout(write_timeout * 2, Box::pin(close_frames(&mut ws, cmd))).await;
        return;
    };
    node.metrics.connects.increment(1);
    let resume = user.resume.take();
    let mut session = Session {
        node: node.clone(),
        user,
        delivered_through: None,
        live_from,
        last_heard: Instant::now(),
        write_timeout,
        send_limits: None,
        reconnect_after: None,
    };
    let welcome = ServerFrame::Welcome {
        node_id: node.node_id.as_str().into(),
        user: session.user.user.as_str().into(),
        partition: session.user.partition,
        epoch: session.user.epoch,
        live_from: Some(MessageId::new(session.user.partition, live_from)),
    }
    .to_json();
    let ended = match session.send(&mut ws, Message::Text(welcome.into())).await {
        Err(e) => e.into(),
        Ok(()) => {
            session.reconnect_after = node.takeovers.since(session.user.partition);
            let phase = match resume {
                Some(resume) => session.start_replay(resume),
                None => {
                    let wait = Duration::from_millis(node.timing.resume_frame_wait_ms);
                    Phase::FirstFrame(tokio::time::Instant::now() + wait)
                }
            };
            session.serve(&mut ws, &mailbox, phase).await
        }
    };
    let reason = match ended {
        Ended::Closed(reason) => Some(reason),
        Ended::ClientGone => None,
    };
    node.hub.unregister(&session.user.user, id);
    if reason == Some(CloseReason::Slow) {
        node.metrics.slow_drops.increment(1);
    }
    node.metrics.disconnect(reason);
}

/// What a replay gives the session next.
enum Replayed {
    Record(Held),
    Done(Outcome),
}

/// The next replayed record, or the outcome once the records ended; never,
/// unless replaying.
async fn next_replayed(phase: &mut Phase) -> Replayed {
    match phase {
        Phase::Replaying(replay) => match replay.rx.records.recv().await {
            Some(record) => Replayed::Record(record),
            None => Replayed::Done((&mut replay.rx.outcome).await.unwrap_or(Err(ResumeFailure::Unavailable))),
        },
        _ => std::future::pending().await,
    }
}

// The rare paths (a close, a refusal, the end of a replay, a failed
// produce's error) are awaited boxed: a session's future is as large as its
// largest await point, and every idle session is one such future on the
// heap (see the test at the end).
impl Session {
    async fn serve(&mut self, ws: &mut WebSocket, mailbox: &Mailbox, mut phase: Phase) -> Ended {
        let timing = &self.node.timing;
        let ping_every = Duration::from_millis(timing.ping_interval_ms.max(10));
        let idle_timeout = Duration::from_millis(timing.idle_timeout_ms.max(10));
        let max_sends = self.node.limits.max_inflight_sends.max(1);
        // One timer, kept in the future rather than boxed, for the next
        // ping and the wait for a first frame; sends in flight are held only
        // while there are some.
        let mut next_ping = Instant::now() + ping_every;
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        let mut sends: Option<FuturesUnordered<PendingSend>> = None;
        loop {
            let replaying = matches!(phase, Phase::Replaying(_));
            let first_frame_until = match phase {
                Phase::FirstFrame(until) => Some(until),
                _ => None,
            };
            let live = matches!(phase, Phase::Live);
            let wake_at = first_frame_until.map_or(next_ping, |until| until.min(next_ping));
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
            let in_flight = sends.as_ref().map_or(0, FuturesUnordered::len);
            tokio::select! {
                biased;
                cmd = mailbox.wait() => return Box::pin(self.obey(ws, mailbox, cmd, live)).await,
                item = next_replayed(&mut phase), if replaying => {
                    let result = match item {
                        Replayed::Record(d) => {
                            if let Phase::Replaying(replay) = &mut phase {
                                replay.replayed += 1;
                            }
                            self.write(ws, &d, true).await
                        }
                        Replayed::Done(Err(ResumeFailure::Unavailable)) => {
                            // The log holds the records; only reading them
                            // failed for now. A gap would lose them: the
                            // client resumes again from the same id.
                            let retry_after_ms = UNAVAILABLE_RETRY_MS + rand::random_range(0..=UNAVAILABLE_RETRY_MS);
                            let cmd = CloseCmd::new(CloseReason::Unavailable, retry_after_ms);
                            return Box::pin(self.close(ws, cmd)).await;
                        }
                        Replayed::Done(outcome) => Box::pin(self.resumed(ws, &mut phase, outcome)).await,
                    };
                    if let Err(e) = result {
                        return e.into();
                    }
                }
                d = mailbox.recv(), if live => {
                    if let Err(e) = self.write(ws, &d, false).await {
                        return e.into();
                    }
                }
                Some((client_msg_id, outcome)) = async { sends.as_mut()?.next().await }, if in_flight > 0 => {
                    if sends.as_ref().is_some_and(FuturesUnordered::is_empty) {
                        sends = None;
                    }
                    let frame = match outcome {
                        Ok(id) => {
                            self.node.metrics.received.increment(1);
                            ServerFrame::Ack { client_msg_id: client_msg_id.as_deref().map(Into::into), id }.to_json()
                        }
                        Err(message) => ServerFrame::Error {
                            code: "send_failed".into(),
                            message: message.into(),
                            client_msg_id: client_msg_id.as_deref().map(Into::into),
                        }
                        .to_json(),
                    };
                    if let Err(e) = self.send(ws, Message::Text(frame.into())).await {
                        return e.into();
                    }
                }
                message = ws.next(), if in_flight < max_sends => {
                    self.last_heard = Instant::now();
                    let result = match message {
                        Some(Ok(Message::Text(text))) => {
                            let first = first_frame_until.is_some();
                            match self.on_text(ws, text.as_str(), &mut sends, first).await {
                                Ok(Some(next)) => {
                                    phase = next;
                                    Ok(())
                                }
                                Ok(None) => {
                                    if first {
                                        phase = Phase::Live;
                                    }
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let message = "binary frames are not part of the protocol".into();
                            Box::pin(self.refuse(ws, InvalidFrame::BadFrame, message, None)).await
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                        Some(Ok(Message::Close(_))) | None => return Ended::ClientGone,
                        Some(Err(e)) => {
                            // Oversized frames end here (the codec's hard limit).
                            if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                                self.node.metrics.invalid_frames.increment(InvalidFrame::TooLarge);
                            }
                            return Ended::ClientGone;
                        }
                    };
                    if let Err(e) = result {
                        return e.into();
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if first_frame_until.is_some_and(|until| until <= now) {
                        phase = Phase::Live;
                    }
                    if next_ping > now {
                        continue;
                    }
                    next_ping = now + ping_every;
                    if self.last_heard.elapsed() >= idle_timeout {
                        return Box::pin(self.close(ws, CloseCmd::new(CloseReason::Idle, 0))).await;
                    }
                    if let Err(e) = self.send(ws, Message::Ping(Default::default())).await {
                        return e.into();
                    }
                }
            }
        }
    }

    /// Carries out a close order. A live session first writes what it
    /// already queued, so the client has every record below the order's
    /// `through`; one replaying or not yet live drops the `through`, as
    /// records below it may not have reached the client.
    async fn obey(&mut self, ws: &mut WebSocket, mailbox: &Mailbox, mut cmd: CloseCmd, live: bool) -> Ended {
        if live {
            while let Some(d) = mailbox.try_recv() {
                if let Err(e) = self.write(ws, &d, false).await {
                    return e.into();
                }
            }
        } else {
            cmd.through = None;
        }
        self.close(ws, cmd).await
    }

    /// Plans the replay the client asked for: the phase to enter and the
    /// channel the replayed records and the outcome come on.
    fn start_replay(&mut self, resume: Resume) -> Phase {
        self.note_resume();
        let (mut tx, rx) = replay_channel();
        let partition = self.user.partition;
        match resume.id.parse::<MessageId>() {
            Err(_) => tx.finish(Err(ResumeFailure::BadId)),
            Ok(id) if id.partition != partition => tx.finish(Err(ResumeFailure::WrongPartition)),
            Ok(id) => {
                let from = match resume.from {
                    ResumeFrom::After => id.offset.saturating_add(1),
                    ResumeFrom::At => id.offset,
                };
                // What the client has: dropped if it comes again.
                self.delivered_through = Some(from - 1);
                let node = self.node.clone();
                let user = self.user.user.clone();
                tokio::spawn(plan_replay(node, user, partition, from, self.live_from, tx));
            }
        }
        Phase::Replaying(Box::new(Replay { resume, replayed: 0, rx, started: Instant::now() }))
    }

    /// A resuming client is a reconnect: if this node took its partition
    /// over lately, that took `reconnect_after` (once per user).
    fn note_resume(&mut self) {
        if let Some(took) = self.reconnect_after.take()
            && self.node.takeovers.resumed(self.user.partition, &self.user.user)
        {
            self.node.metrics.reconnect.record(took.as_secs_f64());
        }
    }

    /// Ends the replay with `resumed`, and goes live.
    async fn resumed(
        &mut self,
        ws: &mut WebSocket,
        phase: &mut Phase,
        outcome: Result<(), ResumeFailure>,
    ) -> Result<(), WriteError> {
        let Phase::Replaying(replay) = std::mem::replace(phase, Phase::Live) else {
            return Ok(());
        };
        let Replay { resume, replayed, started, .. } = *replay;
        self.node.metrics.resume.record(started.elapsed().as_secs_f64());
        if let Err(reason) = outcome {
            self.node.metrics.resume_unrecovered.increment(reason);
            tracing::debug!(user = %self.user.user, id = %resume.id, reason = reason.as_str(), "resume not recovered");
        }
        let frame = ServerFrame::Resumed {
            last_id: (resume.from == ResumeFrom::After).then(|| resume.id.as_str().into()),
            from_id: (resume.from == ResumeFrom::At).then(|| resume.id.as_str().into()),
            recovered: outcome.is_ok(),
            replayed,
            reason: outcome.err(),
        };
        self.send(ws, Message::Text(frame.to_json().into())).await
    }

    /// Writes one message unless the client already has it. Replayed
    /// messages are counted apart from the live delivery latency.
    async fn write(&mut self, ws: &mut WebSocket, d: &Delivery, replayed: bool) -> Result<(), WriteError> {
        if self.delivered_through.is_some_and(|s| d.offset <= s) {
            return Ok(());
        }
        self.send(ws, Message::Text(d.frame.clone())).await?;
        self.delivered_through = Some(d.offset);
        let metrics = &self.node.metrics;
        if replayed {
            metrics.replayed.increment(1);
        } else {
            let age_ms = crate::kafka::now_ms().saturating_sub(d.ts_ms).max(0);
            if age_ms <= self.node.timing.max_message_age_ms as i64 {
                metrics.delivered(age_ms as f64);
            } else {
                metrics.delivered.increment(1);
                metrics.expired.increment(1);
            }
        }
        Ok(())
    }

    /// Sends one frame within the write deadline.
    async fn send(&self, ws: &mut WebSocket, message: Message) -> Result<(), WriteError> {
        match tokio::time::timeout(self.write_timeout, ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Gone),
            Err(_) => Err(WriteError::Stuck),
        }
    }

    /// Handles one client text frame. A `resume` as the first frame returns
    /// the replay to start.
    async fn on_text(
        &mut self,
        ws: &mut WebSocket,
        text: &str,
        sends: &mut Option<FuturesUnordered<PendingSend>>,
        first: bool,
    ) -> Result<Option<Phase>, WriteError> {
        let limits = &self.node.limits;
        let frame = match parse_client_frame(text, limits.max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) => return Box::pin(self.refuse(ws, e.code, e.message, None)).await.map(|()| None),
        };
        match frame {
            ClientFrame::Send { to, body, client_msg_id } => {
                let limits = self.send_limits.get_or_insert_with(|| Box::new(SendLimits::new(&self.node.limits)));
                if let Err(message) = limits.check(text.len()) {
                    let id = client_msg_id.as_deref();
                    return Box::pin(self.refuse(ws, InvalidFrame::RateLimited, message, id)).await.map(|()| None);
                }
                if let Err(e) = rtc_core::ids::validate_user_id(&to) {
                    let (message, id) = (format!("recipient: {e}"), client_msg_id.as_deref());
                    return Box::pin(self.refuse(ws, InvalidFrame::BadFrame, message, id)).await.map(|()| None);
                }
                let node = &self.node;
                match crate::kafka::produce(
                    &node.producer,
                    &node.topic,
                    &to,
                    &body,
                    &self.user.user,
                    client_msg_id.as_deref(),
                ) {
                    Ok(delivery) => sends.get_or_insert_with(FuturesUnordered::new).push(Box::pin(async move {
                        let outcome = match delivery.await {
                            Ok(Ok(d)) => Ok(MessageId::new(d.partition as u32, d.offset)),
                            Ok(Err((e, _))) => Err(format!("kafka: {e}")),
                            Err(_) => Err("kafka producer went away".to_owned()),
                        };
                        (client_msg_id, outcome)
                    })),
                    Err(e) => {
                        node.metrics.kafka_errors.increment(KafkaFailure::Produce);
                        let frame = ServerFrame::Error {
                            code: "send_failed".into(),
                            message: format!("kafka: {e}").into(),
                            client_msg_id: client_msg_id.as_deref().map(Into::into),
                        };
                        Box::pin(self.send(ws, Message::Text(frame.to_json().into()))).await?;
                    }
                }
                Ok(None)
            }
            ClientFrame::Resume { last_id: Some(last_id) } if first => {
                Ok(Some(self.start_replay(Resume { from: ResumeFrom::After, id: last_id })))
            }
            ClientFrame::Resume { last_id: None } if first => {
                self.note_resume();
                Ok(None)
            }
            ClientFrame::Resume { .. } => {
                let message = "resume is accepted only as the first frame; connect with last_id instead".into();
                Box::pin(self.refuse(ws, InvalidFrame::BadFrame, message, None)).await.map(|()| None)
            }
        }
    }

    /// Answers a refused frame with `error` (naming the `send` it refuses,
    /// when it has an id), counted by code.
    async fn refuse(
        &self,
        ws: &mut WebSocket,
        code: InvalidFrame,
        message: String,
        client_msg_id: Option<&str>,
    ) -> Result<(), WriteError> {
        self.node.metrics.invalid_frames.increment(code);
        let frame = ServerFrame::Error {
            code: code.as_str().into(),
            message: message.into(),
            client_msg_id: client_msg_id.map(Into::into),
        };
        self.send(ws, Message::Text(frame.to_json().into())).await
    }

    async fn close(&self, ws: &mut WebSocket, cmd: CloseCmd) -> Ended {
        // Bounded: a client that reads nothing cannot hold up a hand-off.
        let _ = tokio::time::timeout(self.write_timeout + CLOSE_HANDSHAKE, close_frames(ws, cmd)).await;
        Ended::Closed(cmd.reason)
    }
}

/// A session's `send` rate limits: messages and bytes per second.
struct SendLimits {
    messages: governor::DefaultDirectRateLimiter,
    bytes: governor::DefaultDirectRateLimiter,
    rates: (u32, u32),
}

impl SendLimits {
    fn new(limits: &crate::config::Limits) -> Self {
        let per_second = |n: u32, burst: u32| {
            let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(burst.max(n.get())).unwrap_or(n);
            governor::RateLimiter::direct(governor::Quota::per_second(n).allow_burst(burst))
        };
        let largest = u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX);
        Self {
            messages: per_second(limits.send_rate, limits.send_rate),
            bytes: per_second(limits.send_bytes_rate, limits.send_bytes_rate.max(largest)),
            rates: (limits.send_rate, limits.send_bytes_rate),
        }
    }

    /// Takes one `send` of `bytes`, or says why not.
    fn check(&self, bytes: usize) -> Result<(), String> {
        let n = NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX).max(1)).unwrap_or(NonZeroU32::MIN);
        let within = self.messages.check().is_ok() && matches!(self.bytes.check_n(n), Ok(Ok(())));
        within
            .then_some(())
            .ok_or_else(|| format!("over {} sends or {} bytes per second; not sent", self.rates.0, self.rates.1))
    }
}

/// `disconnect`, the close frame, and the rest of the closing handshake.
async fn close_frames(ws: &mut WebSocket, cmd: CloseCmd) {
    let frame = ServerFrame::Disconnect {
        reason: cmd.reason,
        reconnect: true,
        retry_after_ms: cmd.retry_after_ms,
        through: cmd.through,
    };
    let _ = ws.send(Message::Text(frame.to_json().into())).await;
    let close = CloseFrame { code: cmd.reason.close_code().into(), reason: cmd.reason.as_str().into() };
    if ws.send(Message::Close(Some(close))).await.is_ok() {
        // Finish the closing handshake (bounded) rather than dropping the
        // connection under the client, which could then fail writing a
        // pong before it reads the disconnect frame.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Finds the records of `user` in `[from, to)` (`to`: the session's live
/// start): from this node's cache when it holds all of them, else from the
/// log. Either way each record is counted against the memory budget until
/// written; from the cache, what does not fit is read from the log.
async fn plan_replay(
    node: Arc<SessionContext>,
    user: String,
    partition: u32,
    mut from: i64,
    to: i64,
    mut reply: ReplaySender,
) {
    if from < to
        && let Some(records) = node.hub.cached(&user, partition, from, to)
    {
        node.metrics.resume_cache_hits.increment(1);
        let budget = node.hub.budget();
        for d in records {
            let Some(held) = budget.hold(&d) else {
                node.metrics.budget_evictions.increment(Evicted::Replay);
                from = d.offset;
                node.catchup.submit(Request::new(partition, user, from, to, reply));
                return;
            };
            if reply.records.send(held).await.is_err() {
                return;
            }
        }
        reply.finish(Ok(()));
        return;
    }
    node.catchup.submit(Request::new(partition, user, from, to, reply));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Admitted, SessionContext};
    use crate::hub::Seat;
    use crate::upgrade::WebSocket;

    /// The size of the future an `async fn` taking these arguments returns.
    fn future_size<F, Fut>(_: &F) -> usize
    where
        F: Fn(WebSocket, Arc<SessionContext>, Admitted, Seat) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle session is one such future on the heap: the rare paths
    /// (close, refusals, the end of a replay) are boxed when taken, so they
    /// do not make every session as large as the largest of them.
    #[test]
    fn an_idle_session_stays_small() {
        let size = future_size(&super::run);
        // 2 104 bytes since the replay's state is boxed (2 232 inline).
        assert!(size <= 2_150, "session future: {size} bytes");
    }
}
