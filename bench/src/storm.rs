//! `resume-storm`: users connected through the load balancer with
//! `rtc-client` while this process produces messages to them. When a
//! rebalance moves a user (`disconnect{rebalance|drain}`), it reconnects as
//! an app whose stored position lags by 1–10 s would: a new client resuming
//! after the id it had processed that long before. The time from the
//! disconnect to `resumed` is measured per user; at the end every message
//! acknowledged by Kafka for a user is checked against what the user's app
//! received (after the client's dedupe), and what arrived twice.
//!
//! Prints JSON lines: `connected` once every user is in, `ready` after the
//! warm-up (the caller then causes the rebalance), `report` at the end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rdkafka::config::ClientConfig as KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rtc_client::{ClientConfig, Event, MessageId, RtcClient, SessionEnd};
use rtc_core::protocol::CloseReason;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
pub struct StormArgs {
    /// Load balancer URLs, comma-separated (`http://host:port`).
    #[arg(long, env = "RTC_BENCH_LB", value_delimiter = ',')]
    lb: Vec<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "RTC_BENCH_BROKERS")]
    brokers: String,
    #[arg(long, env = "RTC_BENCH_TOPIC", default_value = rtc_core::config::DEFAULT_TOPIC)]
    topic: String,
    /// Users `storm-0` … `storm-<users − 1>`.
    #[arg(long, env = "RTC_BENCH_USERS", default_value_t = 5000)]
    users: usize,
    /// Messages per second to random users, from the first connect to the end.
    #[arg(long, env = "RTC_BENCH_RATE", default_value_t = 5000)]
    rate: u64,
    /// Seconds of producing before `ready` (the rebalance comes after).
    #[arg(long, env = "RTC_BENCH_WARMUP_SECS", default_value_t = 15)]
    warmup_secs: u64,
    /// Seconds of producing after `ready`.
    #[arg(long, env = "RTC_BENCH_STORM_SECS", default_value_t = 20)]
    storm_secs: u64,
    /// A moved user resumes after the id it had processed this long before
    /// the disconnect, drawn uniformly from [min, max].
    #[arg(long, env = "RTC_BENCH_LAG_MIN_MS", default_value_t = 1000)]
    lag_min_ms: u64,
    #[arg(long, env = "RTC_BENCH_LAG_MAX_MS", default_value_t = 10000)]
    lag_max_ms: u64,
    /// Source address of the clients' connections.
    #[arg(long, env = "RTC_BENCH_FROM_IP", default_value = "127.0.0.2")]
    from_ip: IpAddr,
    /// Connection attempts in flight at once.
    #[arg(long, env = "RTC_BENCH_CONNECT_CONCURRENCY", default_value_t = 128)]
    connect_concurrency: usize,
}

/// One user's view, kept by its task.
#[derive(Default)]
struct UserLog {
    /// Ids the app received, over all its clients.
    received: HashSet<MessageId>,
    /// Ids the current client delivered (its own dedupe must hold).
    this_client: HashSet<MessageId>,
    /// Ids one client delivered twice: must be 0.
    duplicates: u64,
    /// Ids delivered again after a lagging resume: expected (at least once
    /// after the app's stored position).
    redelivered: u64,
    /// The server said `resumed{recovered:false}`: a gap it told the app of.
    told_gap: bool,
    /// Ids received lately, with when (for the lagging resume point).
    recent: VecDeque<(Instant, MessageId)>,
}

/// What the storm measured, per moved user.
#[derive(Default)]
struct Storm {
    resume_ms: Vec<u64>,
    /// From the disconnect to the new session's `welcome` (the rest of
    /// `resume_ms` is the replay).
    welcome_ms: Vec<u64>,
    lag_ms: Vec<u64>,
    /// How sessions ended, by kind (rebalance moves and anything else).
    ends: HashMap<String, u64>,
    unrecovered: HashMap<String, u64>,
    /// Failed attempts of moved users' reconnects, by kind.
    reconnect_errors: HashMap<String, u64>,
    replayed: u64,
}

pub async fn run(args: StormArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.lb.is_empty(), "--lb needs at least one load balancer");
    anyhow::ensure!(args.lag_min_ms <= args.lag_max_ms, "--lag-min-ms is above --lag-max-ms");
    let args = Arc::new(args);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let storm = Arc::new(Mutex::new(Storm::default()));
    let logs: Vec<Arc<Mutex<UserLog>>> = (0..args.users).map(|_| Arc::default()).collect();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(args.users.max(1));
    let deadline = Instant::now() + Duration::from_secs(args.warmup_secs + args.storm_secs + 600);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, log) in logs.iter().enumerate() {
        let (args, permits, storm, log, connected) =
            (args.clone(), permits.clone(), storm.clone(), log.clone(), connected_tx.clone());
        tasks.spawn(async move { user(i, &args, permits, storm, log, connected).await });
    }
    drop(connected_tx);
    let started = Instant::now();
    for _ in 0..args.users {
        tokio::select! {
            r = connected_rx.recv() => if r.is_none() { break },
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!("users did not connect in time"),
        }
    }
    println!(
        "{}",
        serde_json::json!({"event": "connected", "users": args.users, "secs": started.elapsed().as_secs_f64()})
    );

    let producer: FutureProducer = KafkaConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?;
    let acked: Arc<Mutex<Vec<(usize, MessageId)>>> = Arc::default();
    let produce = {
        let (args, acked) = (args.clone(), acked.clone());
        tokio::spawn(async move { produce(&args, &producer, acked).await })
    };
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    println!("{}", serde_json::json!({"event": "ready"}));
    let produced = produce.await??;
    // Settle: every moved user resumed, every message arrived (bounded).
    let settle = Instant::now() + Duration::from_secs(30);
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    // Missing ids: (of users never told of a gap, of users told).
    let missing = |logs: &[Arc<Mutex<UserLog>>]| {
        let (mut untold, mut told) = (0, 0);
        for (u, id) in &acked {
            let log = logs[*u].lock().unwrap_or_else(|p| p.into_inner());
            if !log.received.contains(id) {
                if log.told_gap { told += 1 } else { untold += 1 }
            }
        }
        (untold, told)
    };
    while missing(&logs).0 > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tasks.abort_all();

    let (lost, told) = missing(&logs);
    let duplicates: u64 = logs.iter().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).duplicates).sum();
    let redelivered: u64 = logs.iter().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).redelivered).sum();
    let storm = storm.lock().unwrap_or_else(|p| p.into_inner());
    let mut resume = storm.resume_ms.clone();
    resume.sort_unstable();
    let q = |v: &[u64], p: f64| v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied();
    let mut welcome = storm.welcome_ms.clone();
    welcome.sort_unstable();
    let mut lag = storm.lag_ms.clone();
    lag.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "event": "report",
            "users": args.users,
            "produced": produced,
            "acked": acked.len(),
            "lost": lost,
            "missing_after_a_told_gap": told,
            "duplicates_to_app": duplicates,
            "redelivered_after_lagging_resume": redelivered,
            "session_ends": storm.ends,
            "moved": resume.len(),
            "resume_ms": {"p50": q(&resume, 0.5), "p99": q(&resume, 0.99), "max": resume.last()},
            "welcome_ms": {"p50": q(&welcome, 0.5), "p99": q(&welcome, 0.99), "max": welcome.last()},
            "lag_ms": {"min": lag.first(), "p50": q(&lag, 0.5), "max": lag.last()},
            "replayed_to_app": storm.replayed,
            "unrecovered": storm.unrecovered,
            "reconnect_errors": storm.reconnect_errors,
        })
    );
    Ok(())
}

fn config(args: &StormArgs, i: usize, permits: &Arc<Semaphore>, last_id: Option<MessageId>) -> ClientConfig {
    let mut config = ClientConfig::new(args.lb.clone(), format!("storm-{i}"));
    config.source_ip = Some(args.from_ip);
    config.connect_permits = Some(permits.clone());
    config.last_id = last_id;
    config
}

/// One user: connect, receive; on a move, resume as a lagging app would.
async fn user(
    i: usize,
    args: &StormArgs,
    permits: Arc<Semaphore>,
    storm: Arc<Mutex<Storm>>,
    log: Arc<Mutex<UserLog>>,
    connected: tokio::sync::mpsc::Sender<()>,
) {
    let Ok((mut client, mut events)) = RtcClient::connect(config(args, i, &permits, None)) else { return };
    let mut first = Some(connected);
    // Set while a moved user's new client waits for `resumed`.
    let mut moved_at: Option<Instant> = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::State(rtc_client::State::Connected) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(()).await;
                }
                if let Some(at) = moved_at {
                    storm.lock().unwrap_or_else(|p| p.into_inner()).welcome_ms.push(at.elapsed().as_millis() as u64);
                }
            }
            Event::Message { id, .. } => {
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if !log.this_client.insert(id) {
                    log.duplicates += 1;
                } else if !log.received.insert(id) {
                    log.redelivered += 1;
                }
                let now = Instant::now();
                log.recent.push_back((now, id));
                let keep = Duration::from_millis(args.lag_max_ms + 5_000);
                while log.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > keep) {
                    log.recent.pop_front();
                }
                if moved_at.is_some() {
                    storm.lock().unwrap_or_else(|p| p.into_inner()).replayed += 1;
                }
            }
            Event::Recovered { recovered, reason } => {
                if let Some(at) = moved_at.take() {
                    let mut storm = storm.lock().unwrap_or_else(|p| p.into_inner());
                    storm.resume_ms.push(at.elapsed().as_millis() as u64);
                    if !recovered {
                        log.lock().unwrap_or_else(|p| p.into_inner()).told_gap = true;
                        let reason = reason.map_or("unknown", |r| r.as_str());
                        *storm.unrecovered.entry(reason.to_owned()).or_default() += 1;
                    }
                }
            }
            Event::Error(error) if moved_at.is_some() => {
                let kind = match &error {
                    rtc_client::ClientError::Route { error, .. } => format!("route:{}", error.kind()),
                    rtc_client::ClientError::Connect { error, .. } => format!("connect:{}", error.kind()),
                    rtc_client::ClientError::Server { code, .. } => format!("server:{code}"),
                };
                *storm.lock().unwrap_or_else(|p| p.into_inner()).reconnect_errors.entry(kind).or_default() += 1;
            }
            Event::SessionEnded { end, .. } if !is_move(&end) => {
                *storm.lock().unwrap_or_else(|p| p.into_inner()).ends.entry(end_kind(&end)).or_default() += 1;
            }
            Event::SessionEnded { end, .. } => {
                *storm.lock().unwrap_or_else(|p| p.into_inner()).ends.entry(end_kind(&end)).or_default() += 1;
                // The app's stored position lags: resume after the id it had
                // processed `lag` before now (or its oldest known one).
                let at = Instant::now();
                let lag = Duration::from_millis(rand::rng().random_range(args.lag_min_ms..=args.lag_max_ms));
                let (resume_id, achieved) = {
                    let log = log.lock().unwrap_or_else(|p| p.into_inner());
                    let before = log.recent.iter().rev().find(|(t, _)| at.duration_since(*t) >= lag);
                    match before.or(log.recent.front()) {
                        Some((t, id)) => (Some(*id), at.duration_since(*t)),
                        None => (None, Duration::ZERO),
                    }
                };
                // A user that got nothing lately lets its client resume by
                // itself (from its first welcome's `live_from`).
                if resume_id.is_some() {
                    log.lock().unwrap_or_else(|p| p.into_inner()).this_client.clear();
                    client.close();
                    let Ok((c, e)) = RtcClient::connect(config(args, i, &permits, resume_id)) else { return };
                    (client, events) = (c, e);
                    storm.lock().unwrap_or_else(|p| p.into_inner()).lag_ms.push(achieved.as_millis() as u64);
                    moved_at = Some(at);
                }
            }
            _ => {}
        }
    }
}

/// A rebalance or drain moved the user to another node.
fn is_move(end: &SessionEnd) -> bool {
    matches!(end, SessionEnd::Disconnect { reason: CloseReason::Rebalance | CloseReason::Drain, .. })
}

fn end_kind(end: &SessionEnd) -> String {
    match end {
        SessionEnd::Disconnect { reason, .. } => format!("disconnect:{}", reason.as_str()),
        SessionEnd::Closed { code, .. } => format!("closed:{code}"),
        SessionEnd::Lost(_) => "lost".to_owned(),
        SessionEnd::ClientClosed => "client_closed".to_owned(),
    }
}

/// Produces to random users at the rate until warm-up plus storm time is
/// over; returns how many were sent. Acknowledged ids go to `acked`.
async fn produce(
    args: &StormArgs,
    producer: &FutureProducer,
    acked: Arc<Mutex<Vec<(usize, MessageId)>>>,
) -> anyhow::Result<u64> {
    let tick = Duration::from_millis(10);
    let per_tick = args.rate as f64 * tick.as_secs_f64();
    let end = Instant::now() + Duration::from_secs(args.warmup_secs + args.storm_secs);
    let mut interval = tokio::time::interval(tick);
    let (mut due, mut sent) = (0.0f64, 0u64);
    let mut pending = tokio::task::JoinSet::new();
    while Instant::now() < end {
        interval.tick().await;
        due += per_tick;
        while due >= 1.0 {
            due -= 1.0;
            let user = rand::rng().random_range(0..args.users);
            let key = format!("storm-{user}");
            let body = format!("{{\"n\":{sent}}}");
            let record = FutureRecord::to(&args.topic).key(&key).payload(&body);
            match producer.send_result(record) {
                Ok(delivery) => {
                    let acked = acked.clone();
                    pending.spawn(async move {
                        if let Ok(Ok(d)) = delivery.await {
                            let id = MessageId::new(d.partition as u32, d.offset);
                            acked.lock().unwrap_or_else(|p| p.into_inner()).push((user, id));
                        }
                    });
                    sent += 1;
                }
                Err((e, _)) => eprintln!("produce failed: {e}"),
            }
        }
        while pending.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while pending.join_next().await.is_some() {} }).await;
    Ok(sent)
}
