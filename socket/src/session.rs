//! One WebSocket session: writes the user's messages, reads the client's
//! frames, keeps the connection alive, and closes when told to.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::frame::{
    ClientFrame, CloseReason, InvalidFrame, ServerFrame, message_id, parse_client_frame, parse_message_id,
};
use crate::hub::{CloseCmd, Delivery};
use crate::metrics::KafkaFailure;
use crate::node::NodeShared;

/// A user admitted by the WebSocket handler.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub user: String,
    pub partition: u32,
    pub epoch: u64,
}

/// How long a closing session waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

type SendOutcome = (Option<String>, Result<(u32, i64), String>);
type PendingSend = Pin<Box<dyn Future<Output = SendOutcome> + Send>>;

struct Session {
    node: Arc<NodeShared>,
    user: Admitted,
    /// Highest offset of the user's partition this client has (written or
    /// named in `resume`). Live messages arrive in offset order, so one at
    /// or below it is a duplicate (a partition consumed again after a move).
    seen_through: Option<i64>,
    /// Offsets written lately (at most a resume buffer's worth). A replay
    /// can include messages older than a live one already written, so
    /// replays are deduplicated against these rather than `seen_through`.
    written_recently: VecDeque<i64>,
    last_heard: Instant,
    /// Welcomed this long after this node took the user's partition over
    /// from another node: the hand-off reconnect time, recorded if the
    /// client resumes (see `crate::takeover`).
    reconnect_after: Option<Duration>,
}

/// Where a message being written comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The session's queue: counted by the hub until written.
    Live,
    /// The user's resume buffer.
    Replay,
}

/// Why the loop ended: a close order, or the client went away.
enum Ended {
    Closed(CloseReason),
    ClientGone,
}

pub async fn run(mut ws: WebSocket, node: Arc<NodeShared>, user: Admitted, seat: crate::hub::Seat) {
    let registration = node.hub.register(&user.user, user.partition);
    // Registered: the session counts now, the seat can go.
    drop(seat);
    let (id, mut queue, control) = (registration.id, registration.queue, registration.control);
    node.metrics.connects.increment(1);
    let mut session = Session {
        node: node.clone(),
        user,
        seen_through: None,
        written_recently: VecDeque::new(),
        last_heard: Instant::now(),
        reconnect_after: None,
    };

    let welcome = ServerFrame::Welcome {
        node_id: &node.node_id,
        user: &session.user.user,
        partition: session.user.partition,
        epoch: session.user.epoch,
    }
    .to_json();
    let ended = if ws.send(Message::Text(welcome.into())).await.is_err() {
        Ended::ClientGone
    } else {
        session.reconnect_after = node.takeovers.since(session.user.partition);
        session.serve(&mut ws, &mut queue, &control).await
    };
    let reason = match ended {
        Ended::Closed(reason) => Some(reason),
        Ended::ClientGone => None,
    };
    node.hub.unregister(&session.user.user, id, queue, reason);
    node.metrics.disconnect(reason);
}

impl Session {
    async fn serve(
        &mut self,
        ws: &mut WebSocket,
        queue: &mut tokio::sync::mpsc::Receiver<Arc<Delivery>>,
        control: &crate::hub::SessionControl,
    ) -> Ended {
        let timing = &self.node.config.timing;
        let ping_every = Duration::from_millis(timing.ping_interval_ms.max(10));
        let idle_timeout = Duration::from_millis(timing.idle_timeout_ms.max(10));
        let max_sends = self.node.config.limits.max_inflight_sends.max(1);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut sends: FuturesUnordered<PendingSend> = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                cmd = control.wait() => {
                    if cmd.reason.hands_off() {
                        // Flush what was already fetched before saying goodbye.
                        while let Ok(d) = queue.try_recv() {
                            if self.write(ws, &d, Source::Live).await.is_err() {
                                return Ended::ClientGone;
                            }
                        }
                    }
                    return self.close(ws, cmd).await;
                }
                Some(d) = queue.recv() => {
                    if self.write(ws, &d, Source::Live).await.is_err() {
                        return Ended::ClientGone;
                    }
                }
                Some((client_msg_id, outcome)) = sends.next(), if !sends.is_empty() => {
                    let frame = match outcome {
                        Ok((p, o)) => {
                            self.node.metrics.received.increment(1);
                            ServerFrame::Ack { client_msg_id: client_msg_id.as_deref(), id: message_id(p, o) }.to_json()
                        }
                        Err(message) => ServerFrame::Error { code: "send_failed", message }.to_json(),
                    };
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        return Ended::ClientGone;
                    }
                }
                message = ws.recv(), if sends.len() < max_sends => {
                    self.last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            if self.on_text(ws, text.as_str(), &mut sends).await.is_err() {
                                return Ended::ClientGone;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if self.refuse(ws, InvalidFrame::BadFrame, "binary frames are not part of the protocol".into()).await.is_err() {
                                return Ended::ClientGone;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return Ended::ClientGone,
                        Some(Err(e)) => {
                            // Oversized frames end here (the codec's hard limit).
                            if e.to_string().contains("too long") || e.to_string().contains("Space limit") {
                                self.node.metrics.invalid_frames.increment(InvalidFrame::TooLarge);
                            }
                            return Ended::ClientGone;
                        }
                    }
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() >= idle_timeout {
                        return self.close(ws, CloseCmd { reason: CloseReason::Idle, retry_after_ms: 0 }).await;
                    }
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return Ended::ClientGone;
                    }
                }
            }
        }
    }

    /// Writes one message unless the client already has it.
    async fn write(&mut self, ws: &mut WebSocket, d: &Delivery, source: Source) -> Result<(), axum::Error> {
        let duplicate = match source {
            Source::Live => self.seen_through.is_some_and(|s| d.offset <= s),
            Source::Replay => self.written_recently.contains(&d.offset),
        };
        let result = if duplicate { Ok(()) } else { ws.send(Message::Text(d.frame.clone())).await };
        match source {
            Source::Live => self.node.hub.written(d.partition, d.offset),
            // A replay to a user who had no session when it arrived.
            Source::Replay if result.is_ok() => self.node.hub.replayed(d.partition, d.offset),
            Source::Replay => {}
        }
        if result.is_ok() && !duplicate {
            self.seen_through = Some(self.seen_through.map_or(d.offset, |s| s.max(d.offset)));
            if self.written_recently.len() >= self.node.config.limits.resume_buffer.max(1) {
                self.written_recently.pop_front();
            }
            self.written_recently.push_back(d.offset);
            let latency_ms = (crate::kafka::now_ms() - d.ts_ms).max(0) as f64;
            self.node.metrics.delivered(latency_ms);
        }
        result
    }

    async fn on_text(
        &mut self,
        ws: &mut WebSocket,
        text: &str,
        sends: &mut FuturesUnordered<PendingSend>,
    ) -> Result<(), axum::Error> {
        let limits = &self.node.config.limits;
        let frame = match parse_client_frame(text, limits.max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) => return self.refuse(ws, e.code, e.message).await,
        };
        match frame {
            ClientFrame::Send { to, body, client_msg_id } => {
                if let Err(e) = rtc_core::ids::validate_user_id(&to) {
                    return self.refuse(ws, InvalidFrame::BadFrame, format!("recipient: {e}")).await;
                }
                let node = &self.node;
                match crate::kafka::produce(
                    &node.producer,
                    &node.config.topic.topic,
                    &to,
                    &body,
                    &self.user.user,
                    client_msg_id.as_deref(),
                ) {
                    Ok(delivery) => sends.push(Box::pin(async move {
                        let outcome = match delivery.await {
                            Ok(Ok(d)) => Ok((d.partition as u32, d.offset)),
                            Ok(Err((e, _))) => Err(format!("kafka: {e}")),
                            Err(_) => Err("kafka producer went away".to_owned()),
                        };
                        (client_msg_id, outcome)
                    })),
                    Err(e) => {
                        node.metrics.kafka_errors.increment(KafkaFailure::Produce);
                        let frame =
                            ServerFrame::Error { code: "send_failed", message: format!("kafka: {e}") }.to_json();
                        return ws.send(Message::Text(frame.into())).await;
                    }
                }
                Ok(())
            }
            ClientFrame::Resume { last_id } => {
                let after = match last_id.as_deref().map(parse_message_id) {
                    None => None,
                    Some(Some((p, o))) if p == self.user.partition => Some(o),
                    // Another partition's id (the partition count changed):
                    // nothing of ours is known to the client.
                    Some(Some(_)) => None,
                    Some(None) => {
                        return self.refuse(ws, InvalidFrame::BadFrame, "last_id is not partition:offset".into()).await;
                    }
                };
                let (partition, user) = (self.user.partition, &self.user.user);
                if let Some(took) = self.reconnect_after.take()
                    && self.node.takeovers.resumed(partition, user)
                {
                    self.node.metrics.reconnect.record(took.as_secs_f64());
                }
                if let Some(o) = after {
                    self.seen_through = Some(self.seen_through.map_or(o, |s| s.max(o)));
                }
                let replay = self.node.hub.buffered_after(&self.user.user, self.user.partition, after);
                for d in replay {
                    self.write(ws, &d, Source::Replay).await?;
                }
                Ok(())
            }
        }
    }

    async fn refuse(&self, ws: &mut WebSocket, code: InvalidFrame, message: String) -> Result<(), axum::Error> {
        self.node.metrics.invalid_frames.increment(code);
        ws.send(Message::Text(ServerFrame::Error { code: code.as_str(), message }.to_json().into())).await
    }

    async fn close(&self, ws: &mut WebSocket, cmd: CloseCmd) -> Ended {
        let frame = ServerFrame::Disconnect { reason: cmd.reason, reconnect: true, retry_after_ms: cmd.retry_after_ms }
            .to_json();
        let _ = ws.send(Message::Text(frame.into())).await;
        let close = CloseFrame { code: cmd.reason.close_code(), reason: cmd.reason.as_str().into() };
        if ws.send(Message::Close(Some(close))).await.is_ok() {
            // Finish the closing handshake (bounded) rather than dropping the
            // connection under the client, which could then fail writing a
            // pong before it reads the disconnect frame.
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                while let Some(Ok(m)) = ws.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        Ended::Closed(cmd.reason)
    }
}
