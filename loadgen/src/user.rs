//! One simulated user's life on [`rtc_client`]: the client routes, connects,
//! resumes after its last id and reconnects on its own; this module turns
//! its events into the run's ledger and counters, and leaves cleanly when
//! the profile says so (once nothing is on its way to the user, or its
//! grace ran out).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtc_client::{ClientConfig, ClientError, Event, RouteError, RtcClient, SessionEnd, State};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::stats::Stats;

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

/// How the user's life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It left as the profile asked.
    Left,
    /// The server said not to come back, or it gave up connecting.
    Stopped,
}

struct Me {
    shared: Arc<Shared>,
    idx: u32,
    phase: Phase,
    leave: Leave,
    /// Failed connection attempts since the last session opened.
    failures: u32,
    /// The end of the last session (when the client reported it, and why),
    /// until the next one opens: the reconnect time.
    broken: Option<(Instant, String)>,
    end: Option<End>,
}

/// Runs one user until it left (or was stopped); marks `slot.done`.
pub async fn run(shared: Arc<Shared>, slot: UserSlot) {
    let name = shared.ledger().user_name(slot.idx);
    let mut me = Me {
        idx: slot.idx,
        phase: Phase::Gone,
        leave: Leave::new(Duration::from_millis(shared.config.leave_grace_ms)),
        failures: 0,
        broken: None,
        end: None,
        shared,
    };
    me.set_phase(Phase::Connecting);
    let stopped = me.life(client_config(&me.shared, slot.idx, name), &slot.leave).await;
    me.set_phase(Phase::Gone);
    {
        let mut ledger = me.shared.ledger();
        if stopped { ledger.ended(me.idx) } else { ledger.left(me.idx) }
    }
    slot.done.store(true, Ordering::Release);
}

/// The user's client: load balancers rotated so users spread over them, a
/// source address of the configured ones, the run's retry pacing.
fn client_config(shared: &Shared, idx: u32, name: String) -> ClientConfig {
    let config = &shared.config;
    let mut lbs = shared.lbs.clone();
    let first = idx as usize % lbs.len().max(1);
    lbs.rotate_left(first);
    let mut client = ClientConfig::new(lbs, name);
    if !config.source_ips.is_empty() {
        client.source_ip = Some(config.source_ips[idx as usize % config.source_ips.len()]);
    }
    client.min_reconnect_delay = Duration::from_millis(config.backoff_base_ms.max(1));
    client.max_reconnect_delay = Duration::from_millis(config.backoff_max_ms.max(config.backoff_base_ms));
    client.connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
    client.connect_permits = Some(shared.gate.clone());
    client
}

impl Me {
    fn set_phase(&mut self, phase: Phase) {
        let g = &self.shared.gauges;
        match self.phase {
            Phase::Connecting => g.connecting.fetch_sub(1, Ordering::Relaxed),
            Phase::Online => {
                g.open_sockets.fetch_sub(1, Ordering::Relaxed);
                g.online.fetch_sub(1, Ordering::Relaxed)
            }
            Phase::Gone => 0,
        };
        match phase {
            Phase::Connecting => g.connecting.fetch_add(1, Ordering::Relaxed),
            Phase::Online => {
                g.open_sockets.fetch_add(1, Ordering::Relaxed);
                let n = g.online.fetch_add(1, Ordering::Relaxed) + 1;
                g.peak_online.fetch_max(n, Ordering::Relaxed);
                n
            }
            Phase::Gone => 0,
        };
        self.phase = phase;
    }

    /// Returns true when the user stopped for good (not a clean leave).
    async fn life(&mut self, config: ClientConfig, leave: &CancellationToken) -> bool {
        let (client, mut events) = match RtcClient::connect(config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(user = self.idx, error = %e, "bad client settings");
                self.shared.stats().gave_up += 1;
                return true;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event, &client),
                    None => break,
                },
                _ = leave.cancelled(), if !self.leave.started() => self.leave.start(Instant::now()),
                _ = tick.tick(), if self.leave.started() && self.end.is_none() => {
                    // A reconnecting user keeps trying within its grace:
                    // what is on its way arrives on the next session.
                    let pending = self.shared.ledger().pending_of(self.idx);
                    if self.leave.done(Instant::now(), pending) {
                        if self.phase != Phase::Online && self.broken.is_some() {
                            self.shared.stats().reconnects_abandoned += 1;
                        }
                        self.end = Some(End::Left);
                        client.close();
                    }
                }
            }
        }
        self.end != Some(End::Left)
    }

    fn on_event(&mut self, event: Event, client: &RtcClient) {
        let shared = self.shared.clone();
        match event {
            Event::State(State::Connected) => {
                if self.phase == Phase::Online {
                    // The previous session never ended: two at once.
                    shared.stats().double_sessions += 1;
                    tracing::error!(user = self.idx, "a second session opened while one was open");
                }
                self.set_phase(Phase::Online);
                self.failures = 0;
                if let Some((at, reason)) = self.broken.take() {
                    shared.stats().reconnected(at.elapsed().as_millis() as u64, &reason);
                }
                shared.ledger().welcomed(self.idx, crate::now_ms());
            }
            Event::State(State::Connecting | State::Disconnected) => {
                if self.phase == Phase::Online {
                    self.set_phase(Phase::Connecting);
                }
            }
            Event::State(State::Closed) => self.set_phase(Phase::Connecting),
            Event::Message { id, body, .. } => {
                shared.ledger().received(self.idx, &id.to_string(), &body, crate::now_ms());
            }
            Event::Recovered { recovered: false, reason } => {
                let reason = reason.map_or("unknown", |r| r.as_str());
                Stats::count(&mut shared.stats().unrecovered_resumes, reason);
            }
            Event::Recovered { .. } => {}
            Event::SessionEnded { end, reconnect_in } => {
                if self.phase == Phase::Online {
                    self.set_phase(Phase::Connecting);
                }
                match (reconnect_in, &end) {
                    (_, SessionEnd::ClientClosed) => {}
                    (Some(_), _) => self.broken = Some((Instant::now(), end_reason(&end))),
                    (None, _) => {
                        Stats::count(&mut shared.stats().stopped_by_server, end_reason(&end));
                        self.end = Some(End::Stopped);
                    }
                }
            }
            Event::Error(error) => {
                match &error {
                    ClientError::Route { error, .. } => {
                        let mut stats = shared.stats();
                        Stats::count(&mut stats.route_errors, error.kind());
                        if matches!(error, RouteError::Unreachable(_)) && shared.lbs.len() > 1 {
                            stats.route_failovers += 1;
                        }
                    }
                    ClientError::Connect { error, .. } => {
                        Stats::count(&mut shared.stats().connect_errors, error.kind());
                    }
                    ClientError::Server { code, .. } => Stats::count(&mut shared.stats().error_frames, code),
                }
                if matches!(error, ClientError::Route { .. } | ClientError::Connect { .. }) {
                    self.failures += 1;
                    if self.failures >= shared.config.max_attempts && self.end.is_none() {
                        shared.stats().gave_up += 1;
                        tracing::warn!(user = self.idx, attempts = self.failures, "user gives up connecting");
                        self.end = Some(End::Stopped);
                        client.close();
                    }
                }
            }
        }
    }
}

/// Why a session ended, as the report counts reconnects and stops.
fn end_reason(end: &SessionEnd) -> String {
    match end {
        SessionEnd::Disconnect { reason, .. } => reason.as_str().to_owned(),
        SessionEnd::Closed { code, .. } => format!("close_{code}"),
        SessionEnd::Lost(_) => "dropped".to_owned(),
        SessionEnd::ClientClosed => "client_closed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn session_ends_are_named_as_the_report_counts_them() {
        let drain = SessionEnd::Disconnect {
            reason: rtc_client::CloseReason::Drain,
            reconnect: true,
            retry_after: Duration::ZERO,
        };
        assert_eq!(end_reason(&drain), "drain");
        assert_eq!(end_reason(&SessionEnd::Closed { code: 4500, reason: String::new() }), "close_4500");
        assert_eq!(end_reason(&SessionEnd::Lost("reset".into())), "dropped");
    }
}
