//! The rtc load generator (issue 6): simulated users that follow the
//! client protocol, a producer sending to random online users through
//! Kafka, and a report of what was sent, delivered, duplicated and lost.
//!
//! - [`config`]: flags (each with an `RTC_*` variable) and the machine checks;
//! - [`profile`]: the load profile and its user-count schedule (pure);
//! - [`ledger`]: online users, messages produced and received, loss (pure);
//! - [`stats`]: counters and histograms (pure);
//! - [`user`]: one user on an `rtc_client::RtcClient` (route, resume,
//!   reconnect); [`fleet`]: users following the profile;
//! - [`producer`]: the paced Kafka producer;
//! - [`report`]: the per-second timeline and the final report.
#![allow(clippy::disallowed_types)] // measures real processes and networks: std's wall-clock Instant on purpose

pub mod config;
pub mod fleet;
pub mod ledger;
pub mod producer;
pub mod profile;
pub mod report;
pub mod stats;
pub mod user;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::Ledger;
use crate::report::{Report, RunInfo, Snapshot};
use crate::stats::Stats;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Live gauges of the fleet.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Users with a welcomed session open.
    pub online: AtomicU64,
    /// Users connecting or reconnecting.
    pub connecting: AtomicU64,
    pub peak_online: AtomicU64,
    /// WebSocket sockets open.
    pub open_sockets: AtomicU64,
    /// Users the profile asks for now.
    pub target: AtomicU64,
}

/// State shared by the users, the producer and the reporters.
pub struct Shared {
    pub config: Config,
    pub run_id: String,
    /// Load balancers' base URLs (`http://host:port`).
    pub lbs: Vec<String>,
    /// Connection attempts in flight at once, over all users.
    pub gate: Arc<Semaphore>,
    pub gauges: Gauges,
    ledger: Mutex<Ledger>,
    stats: Mutex<Stats>,
}

impl Shared {
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self, elapsed: Duration) -> Snapshot {
        let totals = self.ledger().totals();
        let stats = self.stats();
        let g = &self.gauges;
        Snapshot {
            ts_ms: now_ms(),
            elapsed_ms: elapsed.as_millis() as u64,
            target: g.target.load(Ordering::Relaxed),
            users_online: g.online.load(Ordering::Relaxed),
            connecting: g.connecting.load(Ordering::Relaxed),
            totals,
            reconnects: stats.reconnect.count(),
            reconnect_p99_ms: stats.reconnect.quantile(0.99).unwrap_or(0),
            reconnect_max_ms: stats.reconnect.max().unwrap_or(0),
            route_errors: stats.route_errors.values().sum(),
            double_sessions: stats.double_sessions,
        }
    }
}

/// Runs the whole profile (or until `stop`), then drains and reports.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<Report> {
    let profile = config.load_profile()?;
    config.validate(&profile)?;
    if let Some(limits) = config::read_limits() {
        let peak = profile.peak().min(config.max_users);
        config::check_fits(peak, config.connect_concurrency as u64, config.source_ips.len() as u64, limits)
            .map_err(|e| anyhow::anyhow!("this run cannot fit: {e}"))?;
    }
    let producer = match (&config.kafka_brokers, config.rate > 0.0) {
        (Some(brokers), true) => {
            let p = producer::create(brokers, config.ack_timeout_ms)?;
            let partitions = producer::check_topic(&p, &config.topic).await?;
            tracing::info!(topic = %config.topic, partitions, "Kafka reachable");
            Some(p)
        }
        _ => None,
    };
    let mut timeline = match &config.timeline {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| anyhow::anyhow!("--timeline {}: {e}", path.display()))?,
        )),
        None => None,
    };

    let started_at_ms = now_ms();
    let run_id = format!("{started_at_ms:x}-{:x}", std::process::id());
    let shared = Arc::new(Shared {
        lbs: config.lbs.iter().map(|l| config::lb_url(l)).collect::<Result<_, _>>()?,
        gate: Arc::new(Semaphore::new(config.connect_concurrency)),
        gauges: Gauges::default(),
        ledger: Mutex::new(Ledger::new(run_id.clone(), config.user_prefix.clone())),
        stats: Mutex::new(Stats::default()),
        run_id: run_id.clone(),
        config,
    });
    let config = &shared.config;
    tracing::info!(%run_id, profile = %profile, secs = profile.duration_ms() / 1000, rate = config.rate, "load generator starts");

    // The timeline and progress lines, once a second.
    let sampling = CancellationToken::new();
    let sampler = {
        let (shared, sampling) = (shared.clone(), sampling.clone());
        let start = Instant::now();
        let progress_every = shared.config.progress_secs;
        tokio::spawn(async move {
            let mut prev = shared.snapshot(start.elapsed());
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = sampling.cancelled() => true,
                };
                let cur = shared.snapshot(start.elapsed());
                let latency = shared.ledger().take_recent_latency();
                let reconnects = shared.stats().take_recent_reconnects();
                let line = report::timeline_line(&prev, &cur, latency, reconnects);
                if let Some(out) = timeline.as_mut() {
                    let _ = serde_json::to_writer(&mut *out, &line);
                    let _ = out.write_all(b"\n");
                    let _ = out.flush();
                }
                n += 1;
                if progress_every > 0 && (n.is_multiple_of(progress_every) || last) {
                    eprintln!(
                        "loadgen t={:.0}s target={} online={} connecting={} sent/s={} delivered/s={} in_flight={} reconnects={} p99={}ms",
                        line.elapsed_s,
                        line.target_users,
                        line.users_online,
                        line.connecting,
                        line.messages_sent_per_s,
                        line.delivered_per_s,
                        line.in_flight,
                        line.reconnects_total,
                        line.reconnect_p99_ms_so_far
                    );
                }
                prev = cur;
                if last {
                    return;
                }
            }
        })
    };

    let producing = CancellationToken::new();
    let producer_task = producer.map(|p| tokio::spawn(producer::run(shared.clone(), p, producing.clone())));

    // Follow the profile.
    let mut fleet = fleet::Fleet::new(shared.clone());
    let start = Instant::now();
    let mut peak_target = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => {
                tracing::warn!("stop requested: ending the profile early");
                break;
            }
        }
        let Some(target) = profile.target_at(start.elapsed().as_millis() as u64) else { break };
        let target = target.min(config.max_users);
        peak_target = peak_target.max(target);
        shared.gauges.target.store(target, Ordering::Relaxed);
        fleet.adjust(target);
    }

    // Stop producing, collect the acks, let what is on its way arrive.
    producing.cancel();
    let producer_report = match producer_task {
        Some(task) => task.await.unwrap_or_default(),
        None => Default::default(),
    };
    let drain_until = Instant::now() + Duration::from_secs(config.drain_secs);
    while Instant::now() < drain_until && shared.ledger().totals().pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.gauges.target.store(0, Ordering::Relaxed);
    fleet.leave_all(Duration::from_millis(config.leave_grace_ms) + Duration::from_secs(5)).await;
    sampling.cancel();
    let _ = sampler.await;

    let stats = shared.stats();
    let report = report::build(
        RunInfo {
            run_id,
            started_at_ms,
            ended_at_ms: now_ms(),
            profile: profile.to_string(),
            rate: config.rate,
            peak_users: shared.gauges.peak_online.load(Ordering::Relaxed),
            peak_target,
        },
        shared.ledger().summary(config.lost_sample),
        &stats,
        producer_report,
    );
    drop(stats);
    if let Some(path) = &config.report {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("--report {}: {e}", path.display()))?;
    }
    Ok(report)
}
