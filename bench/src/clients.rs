//! A fleet of WebSocket sessions from one local source address, on rtc's
//! socket node or, for `scripts/bench-peers`, on a Socket.IO or bare `ws`
//! server (`--server`, wire formats in [`crate::peers`]).
//!
//! Each session binds its TCP socket to `--from-ip` (so several processes on
//! several 127.0.0.x addresses can open more sessions than one address has
//! ephemeral ports), connects with a connect token minted for its user, and
//! waits for `welcome`. Once every session connected (or gave up), one line
//! `{"event":"connected",…}` is printed; the sessions are then held (pings
//! are answered by tungstenite as frames are read) until `--hold-secs` pass
//! or SIGTERM, and a `{"event":"report",…}` line closes the run.
//!
//! Each session's connect time (from its attempt's start: route call, TCP,
//! upgrade, first frame) goes into a 1 ms histogram. With
//! `--measure-latency`, every message's `now_ms − ts_ms` goes into another, and ids are deduplicated per session (a record is
//! addressed to one user, who has one session here, so per-session
//! duplicates are all the duplicates).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rtc_client::Ws;
use rtc_core::protocol::{MessageId, ServerFrame};
use rtc_core::{ConnectClaims, TokenSigner};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::peers::{self, PeerMessage, SocketIoFrame};

/// Latencies above this many milliseconds share the last bucket.
const HIST_MAX_MS: usize = 60_000;

#[derive(Debug, Clone, clap::Args)]
pub struct ClientsArgs {
    /// What serves the sessions.
    #[arg(long, env = "RTC_BENCH_SERVER", value_enum, default_value_t = Server::Rtc)]
    pub server: Server,
    /// The server's WebSocket address (`host:port`); rtc without `--route`,
    /// socketio and ws.
    #[arg(long, env = "RTC_BENCH_WS")]
    pub ws: Option<SocketAddr>,
    /// rtc: ask this load balancer (`http://host:port`) for each user's
    /// route and token, as a client does, instead of minting tokens.
    #[arg(long, env = "RTC_BENCH_ROUTE")]
    pub route: Option<String>,
    /// rtc without `--route`: the node id the connect tokens name.
    #[arg(long, env = "RTC_BENCH_NODE_ID")]
    pub node_id: Option<String>,
    /// The node's `--token-secret`.
    #[arg(long, env = "RTC_BENCH_SECRET", default_value = "rtc-dev-secret", hide_default_value = true)]
    pub secret: String,
    /// Partition count of the topic (a token names its user's partition).
    #[arg(long, env = "RTC_BENCH_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS)]
    pub partitions: u32,
    /// Assignment epoch the tokens carry.
    #[arg(long, env = "RTC_BENCH_EPOCH", default_value_t = 1)]
    pub epoch: u64,
    /// Local source address of every session.
    #[arg(long, env = "RTC_BENCH_FROM_IP", default_value = "127.0.0.1")]
    pub from_ip: IpAddr,
    /// Sessions to open.
    #[arg(long, env = "RTC_BENCH_COUNT")]
    pub count: u64,
    /// Users are `<prefix><first-user>` … `<prefix><first-user + count − 1>`.
    #[arg(long, env = "RTC_BENCH_FIRST_USER", default_value_t = 0)]
    pub first_user: u64,
    #[arg(long, env = "RTC_BENCH_USER_PREFIX", default_value = "user-")]
    pub user_prefix: String,
    /// Hold the sessions this long after connecting (SIGTERM ends earlier).
    #[arg(long, env = "RTC_BENCH_HOLD_SECS", default_value_t = 60)]
    pub hold_secs: u64,
    /// Bound on one connect attempt (TCP, upgrade and `welcome`).
    #[arg(long, env = "RTC_BENCH_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Attempts per session before it counts as failed.
    #[arg(long, env = "RTC_BENCH_CONNECT_ATTEMPTS", default_value_t = 3)]
    pub connect_attempts: u32,
    /// Connect attempts in flight at once (keeps the node's accept backlog
    /// from overflowing).
    #[arg(long, env = "RTC_BENCH_CONNECT_CONCURRENCY", default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Record latency and duplicates of `message` frames.
    #[arg(long, env = "RTC_BENCH_MEASURE_LATENCY")]
    pub measure_latency: bool,
    /// Runtime worker threads (1: a current-thread runtime).
    #[arg(long, env = "RTC_BENCH_THREADS", default_value_t = 1)]
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    /// rtc's socket node.
    Rtc,
    /// A Socket.IO 4 server (`bench/peers/socketio-server.mjs`).
    Socketio,
    /// A bare `ws` server (`bench/peers/ws-server.mjs`).
    Ws,
}

struct Ctx {
    args: ClientsArgs,
    signer: TokenSigner,
    gate: Semaphore,
    stats: Stats,
}

struct Stats {
    connected: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    ended_early: AtomicU64,
    messages: AtomicU64,
    duplicates: AtomicU64,
    unparsed: AtomicU64,
    other_frames: AtomicU64,
    first_rx_ms: AtomicI64,
    last_rx_ms: AtomicI64,
    max_latency_ms: AtomicU64,
    hist: Box<[AtomicU64]>,
    connect_hist: Box<[AtomicU64]>,
    max_connect_ms: AtomicU64,
    /// Connect errors and server-initiated closes, by kind.
    events: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn new(measure: bool) -> Self {
        let buckets = if measure { HIST_MAX_MS + 1 } else { 0 };
        Self {
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ended_early: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            first_rx_ms: AtomicI64::new(i64::MAX),
            last_rx_ms: AtomicI64::new(0),
            max_latency_ms: AtomicU64::new(0),
            hist: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            connect_hist: (0..=HIST_MAX_MS).map(|_| AtomicU64::new(0)).collect(),
            max_connect_ms: AtomicU64::new(0),
            events: Mutex::new(BTreeMap::new()),
        }
    }

    fn event(&self, kind: impl Into<String>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()).entry(kind.into()).or_default() += 1;
    }

    fn histogram(&self) -> Vec<u64> {
        loads(&self.hist)
    }

    fn connected_in(&self, elapsed: Duration) {
        let ms = elapsed.as_millis() as u64;
        self.max_connect_ms.fetch_max(ms, Ordering::Relaxed);
        self.connect_hist[(ms as usize).min(HIST_MAX_MS)].fetch_add(1, Ordering::Relaxed);
    }
}

fn loads(buckets: &[AtomicU64]) -> Vec<u64> {
    buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
}

/// A histogram's non-empty buckets as `[ms, count]` pairs (merged across
/// processes by the scripts).
fn sparse(hist: &[u64]) -> Vec<[u64; 2]> {
    hist.iter().enumerate().filter(|(_, c)| **c > 0).map(|(ms, c)| [ms as u64, *c]).collect()
}

pub async fn run(args: ClientsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    let routed = args.server == Server::Rtc && args.route.is_some();
    anyhow::ensure!(routed || args.ws.is_some(), "--ws is needed (or --route, for rtc)");
    anyhow::ensure!(
        args.server != Server::Rtc || routed || args.node_id.is_some(),
        "rtc without --route mints tokens: --node-id is needed"
    );
    let ctx = Arc::new(Ctx {
        signer: TokenSigner::new(args.secret.as_bytes()),
        gate: Semaphore::new(args.connect_concurrency.max(1)),
        stats: Stats::new(args.measure_latency),
        args,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            crate::stop_requested().await;
            let _ = stop_tx.send(true);
        });
    }

    let started = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..ctx.args.count {
        tasks.spawn(session(n, ctx.clone(), ready_tx.clone(), stop_rx.clone()));
    }
    drop(ready_tx);
    let mut settled = 0;
    let mut stop_seen = stop_rx.clone();
    while settled < ctx.args.count {
        tokio::select! {
            r = ready_rx.recv() => match r { Some(()) => settled += 1, None => break },
            _ = stop_seen.wait_for(|s| *s) => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let stats = &ctx.stats;
    println!(
        "{}",
        serde_json::json!({
            "event": "connected",
            "from_ip": ctx.args.from_ip.to_string(),
            "requested": ctx.args.count,
            "connected": stats.connected.load(Ordering::Relaxed),
            "failed": stats.failed.load(Ordering::Relaxed),
            "secs": round3(connect_secs),
        })
    );

    let hold = Duration::from_secs(ctx.args.hold_secs);
    tokio::select! {
        _ = tokio::time::sleep(hold) => {}
        _ = stop_seen.wait_for(|s| *s) => {}
    }
    let _ = stop_tx.send(true);
    let open_at_end = stats.connected.load(Ordering::Relaxed).saturating_sub(stats.ended_early.load(Ordering::Relaxed));
    // Every session returns at once on stop; bound it anyway.
    let _ = tokio::time::timeout(Duration::from_secs(20), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();

    let messages = stats.messages.load(Ordering::Relaxed);
    let duplicates = stats.duplicates.load(Ordering::Relaxed);
    let hist = stats.histogram();
    let connect_hist = loads(&stats.connect_hist);
    let first_rx = stats.first_rx_ms.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "event": "report",
            "from_ip": ctx.args.from_ip.to_string(),
            "requested": ctx.args.count,
            "connected": stats.connected.load(Ordering::Relaxed),
            "failed": stats.failed.load(Ordering::Relaxed),
            "retries": stats.retries.load(Ordering::Relaxed),
            "ended_early": stats.ended_early.load(Ordering::Relaxed),
            "open_at_end": open_at_end,
            "connect_secs": round3(connect_secs),
            "messages": messages,
            "duplicates": duplicates,
            "distinct": messages - duplicates,
            "unparsed": stats.unparsed.load(Ordering::Relaxed),
            "other_frames": stats.other_frames.load(Ordering::Relaxed),
            "first_rx_ms": if first_rx == i64::MAX { None } else { Some(first_rx) },
            "last_rx_ms": stats.last_rx_ms.load(Ordering::Relaxed),
            "latency_ms": {
                "count": hist.iter().sum::<u64>(),
                "p50": quantile(&hist, 0.50),
                "p99": quantile(&hist, 0.99),
                "max": stats.max_latency_ms.load(Ordering::Relaxed),
            },
            "hist": sparse(&hist),
            "connect_ms": {
                "p50": quantile(&connect_hist, 0.50),
                "p99": quantile(&connect_hist, 0.99),
                "max": stats.max_connect_ms.load(Ordering::Relaxed),
            },
            "connect_hist": sparse(&connect_hist),
            "events": *stats.events.lock().unwrap_or_else(|p| p.into_inner()),
        })
    );
    Ok(())
}

/// The `q` quantile (ms) of a 1 ms histogram; `None` when it is empty.
fn quantile(hist: &[u64], q: f64) -> Option<usize> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    hist.iter().position(|c| {
        seen += c;
        seen >= rank
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn session(n: u64, ctx: Arc<Ctx>, ready: mpsc::Sender<()>, mut stop: watch::Receiver<bool>) {
    let args = &ctx.args;
    let user = format!("{}{}", args.user_prefix, args.first_user + n);
    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    let mut ws = None;
    if let Ok(_permit) = ctx.gate.acquire().await {
        for attempt in 0..args.connect_attempts.max(1) {
            if *stop.borrow() {
                break;
            }
            if attempt > 0 {
                ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            let started = Instant::now();
            match tokio::time::timeout(timeout, open(&ctx, &user)).await {
                Ok(Ok(s)) => {
                    ctx.stats.connected_in(started.elapsed());
                    ws = Some(s);
                    break;
                }
                Ok(Err(kind)) => ctx.stats.event(format!("connect_error:{kind}")),
                Err(_) => ctx.stats.event("connect_error:timeout"),
            }
        }
    }
    let Some(mut ws) = ws else {
        ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(()).await;
        return;
    };
    ctx.stats.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(()).await;
    drop(ready);

    let mut seen: HashSet<u64> = HashSet::new();
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            frame = ws.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => match ctx.args.server {
                Server::Rtc => on_text(&ctx, text.as_str(), &mut seen),
                Server::Socketio => match peers::socketio_frame(text.as_str()) {
                    SocketIoFrame::Ping => {
                        if ws.send(Message::text(peers::SOCKETIO_PONG)).await.is_err() {
                            ctx.stats.event("write_error:pong");
                            break;
                        }
                    }
                    SocketIoFrame::Message(m) => on_peer_message(&ctx, m, &mut seen),
                    _ => other_frame(&ctx.stats, "socketio"),
                },
                Server::Ws => match peers::ws_message(text.as_str()) {
                    Some(m) => on_peer_message(&ctx, m, &mut seen),
                    None => other_frame(&ctx.stats, "ws"),
                },
            },
            Some(Ok(Message::Close(close))) => {
                let code = close.map_or(0, |c| u16::from(c.code));
                ctx.stats.event(format!("closed_by_server:{code}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                ctx.stats.event(format!("read_error:{}", read_error_kind(&e)));
                break;
            }
            None => {
                ctx.stats.event("read_error:eof");
                break;
            }
        }
    }
    ctx.stats.ended_early.fetch_add(1, Ordering::Relaxed);
    // Keep the task (not the connection) until stop, so the counts above
    // stay consistent with what the report says was open.
    let _ = stop.wait_for(|s| *s).await;
}

fn on_text(ctx: &Ctx, text: &str, seen: &mut HashSet<u64>) {
    let stats = &ctx.stats;
    if !ctx.args.measure_latency {
        if text.starts_with("{\"type\":\"message\"") {
            stats.messages.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.other_frames.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let Ok(frame) = ServerFrame::parse(text) else {
        stats.unparsed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match frame {
        ServerFrame::Message { id, ts_ms, .. } => received(stats, id_key(id), ts_ms, seen),
        ServerFrame::Disconnect { reason, .. } => {
            stats.event(format!("disconnect:{}", reason.as_str()));
            stats.other_frames.fetch_add(1, Ordering::Relaxed);
        }
        other => {
            stats.event(format!("frame:{}", other.kind()));
            stats.other_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A peer's message (counted alike with or without `--measure-latency`).
fn on_peer_message(ctx: &Ctx, message: PeerMessage, seen: &mut HashSet<u64>) {
    if ctx.args.measure_latency {
        received(&ctx.stats, message.id, message.ts, seen);
    } else {
        ctx.stats.messages.fetch_add(1, Ordering::Relaxed);
    }
}

fn other_frame(stats: &Stats, server: &str) {
    stats.event(format!("frame:{server}"));
    stats.other_frames.fetch_add(1, Ordering::Relaxed);
}

/// One message received: its latency, and whether this session saw it.
fn received(stats: &Stats, key: u64, ts_ms: i64, seen: &mut HashSet<u64>) {
    let now = crate::now_ms();
    stats.messages.fetch_add(1, Ordering::Relaxed);
    stats.first_rx_ms.fetch_min(now, Ordering::Relaxed);
    stats.last_rx_ms.fetch_max(now, Ordering::Relaxed);
    let latency = (now - ts_ms).max(0) as u64;
    stats.max_latency_ms.fetch_max(latency, Ordering::Relaxed);
    stats.hist[(latency as usize).min(HIST_MAX_MS)].fetch_add(1, Ordering::Relaxed);
    if !seen.insert(key) {
        stats.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}

/// A message id as one number (offsets stay far below 2^40).
fn id_key(id: MessageId) -> u64 {
    (u64::from(id.partition) << 40) | (id.offset as u64 & ((1 << 40) - 1))
}

/// Opens one session for `user` from `--from-ip`, up to the server's first
/// frame that says it is connected. Errors are short kinds for the report.
async fn open(ctx: &Ctx, user: &str) -> Result<Ws, String> {
    let args = &ctx.args;
    let source = Some(args.from_ip);
    let server = args.ws.map(|a| a.to_string()).unwrap_or_default();
    match args.server {
        Server::Rtc => {
            let url = match &args.route {
                Some(lb) => {
                    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
                    let answer = rtc_client::fetch_route(lb, user, source, timeout).await.map_err(|e| e.kind())?;
                    answer.connect_url()
                }
                None => format!("ws://{server}/ws?token={}", mint_token(ctx, user)),
            };
            let (ws, _welcome) = rtc_client::open_session(&url, source).await.map_err(|e| e.kind())?;
            Ok(ws)
        }
        Server::Ws => rtc_client::open_ws(&peers::ws_url(&server, user), source).await.map_err(|e| e.kind()),
        Server::Socketio => {
            let mut ws =
                rtc_client::open_ws(&peers::socketio_url(&server, user), source).await.map_err(|e| e.kind())?;
            loop {
                let frame = match ws.next().await {
                    Some(Ok(Message::Text(text))) => peers::socketio_frame(text.as_str()),
                    Some(Ok(Message::Close(_))) | None => return Err("closed_before_connect".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("read_{}", read_error_kind(&e))),
                };
                match frame {
                    SocketIoFrame::Open => {
                        ws.send(Message::text(peers::SOCKETIO_CONNECT)).await.map_err(|_| "write".to_owned())?
                    }
                    SocketIoFrame::Connected => return Ok(ws),
                    SocketIoFrame::Ping => {
                        ws.send(Message::text(peers::SOCKETIO_PONG)).await.map_err(|_| "write".to_owned())?
                    }
                    _ => return Err("unexpected_frame".into()),
                }
            }
        }
    }
}

/// A connect token for `user` on `--node-id` (no load balancer: the fleet
/// measures one node).
fn mint_token(ctx: &Ctx, user: &str) -> String {
    let args = &ctx.args;
    ctx.signer.sign(&ConnectClaims {
        user: user.to_owned(),
        node_id: args.node_id.clone().unwrap_or_default(),
        partition: rtc_core::partition_for_key(user.as_bytes(), args.partitions),
        epoch: args.epoch,
        expires_at_ms: (crate::now_ms() + 600_000) as u64,
        nonce: rand::random(),
    })
}

/// A short kind of a read error, for the report.
fn read_error_kind(e: &tungstenite::Error) -> &'static str {
    match e {
        tungstenite::Error::Io(_) => "io",
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed",
        tungstenite::Error::Protocol(_) => "protocol",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_histogram() {
        assert_eq!(quantile(&[], 0.5), None);
        let mut hist = vec![0u64; 10];
        hist[2] = 50;
        hist[3] = 49;
        hist[9] = 1;
        assert_eq!(quantile(&hist, 0.5), Some(2));
        assert_eq!(quantile(&hist, 0.99), Some(3));
        assert_eq!(quantile(&hist, 1.0), Some(9));
    }

    #[test]
    fn message_ids_are_keys() {
        assert_eq!(id_key(MessageId::new(17, 4711)), (17 << 40) | 4711);
        assert_ne!(id_key(MessageId::new(1, 0)), id_key(MessageId::new(0, 1)));
    }
}
