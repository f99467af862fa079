//! `scaler-load`: the `GetMetrics` benchmark client. Calls `GetMetrics` at
//! a fixed rate (open loop: requests are sent on schedule whatever the
//! server's latency) for a bounded time over N HTTP/2 connections, and
//! prints one JSON line with the counts and latency percentiles.
//!
//! With `--redis-url` it also reads Redis' `INFO commandstats` before and
//! after the run and reports the Redis calls per request; with
//! `--seed-desired` it keeps a fresh decision in Redis during the run (for
//! benchmarking without a load balancer).
#![allow(clippy::disallowed_types)] // measures real processes and networks: std's wall-clock Instant on purpose

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::external_scaler_client::ExternalScalerClient;
use crate::proto::{GetMetricsRequest, ScaledObjectRef};

/// GetMetrics load generator for the rtc KEDA scaler.
#[derive(Debug, Clone, Parser)]
#[command(name = "scaler-load", version, about)]
pub struct LoadArgs {
    /// The scaler's gRPC endpoint (`https://…` for TLS).
    #[arg(long, env = "RTC_LOAD_TARGET", default_value = "http://127.0.0.1:9090")]
    pub target: String,
    /// Requests per second.
    #[arg(long, env = "RTC_LOAD_RATE", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// How long to send, in seconds.
    #[arg(long, env = "RTC_LOAD_DURATION_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration_s: u64,
    /// HTTP/2 connections the requests are spread over (round robin).
    #[arg(long, env = "RTC_LOAD_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub connections: u64,
    /// Requests allowed in flight; a request due while this many are
    /// outstanding is not sent and is counted as `dropped`.
    #[arg(long, env = "RTC_LOAD_MAX_IN_FLIGHT", default_value_t = 5_000)]
    pub max_in_flight: usize,
    /// Metric name to ask for.
    #[arg(long, env = "RTC_LOAD_METRIC_NAME", default_value = crate::config::DEFAULT_METRIC_NAME)]
    pub metric_name: String,
    /// PEM CA that signed the scaler's certificate (TLS).
    #[arg(long, env = "RTC_LOAD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, env = "RTC_LOAD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    #[arg(long, env = "RTC_LOAD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name to check the server certificate against (default: the host).
    #[arg(long, env = "RTC_LOAD_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Redis the scaler reads: count its calls per request (INFO
    /// commandstats before and after the run).
    #[arg(long, env = "RTC_LOAD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Keep a fresh decision with this many desired replicas in Redis during
    /// the run (needs `--redis-url`).
    #[arg(long, env = "RTC_LOAD_SEED_DESIRED", requires = "redis_url")]
    pub seed_desired: Option<u32>,
    /// Key prefix of the seeded decision.
    #[arg(long, env = "RTC_KEY_PREFIX", default_value = rtc_core::config::DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
    /// What to call: `get-metrics`, or the standard health `Check` as the
    /// baseline (the same server and transport, no decision behind it).
    #[arg(long, env = "RTC_LOAD_RPC", value_enum, default_value_t = Rpc::GetMetrics)]
    pub rpc: Rpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    GetMetrics,
    HealthCheck,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub rpc: &'static str,
    pub target: String,
    pub rate: u64,
    pub duration_s: u64,
    pub connections: u64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    pub error_codes: BTreeMap<String, u64>,
    pub achieved_rps: f64,
    /// Latency from sending the request to its answer.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// P99 from the time the request was due (includes client-side delay).
    pub p99_from_schedule_ms: f64,
    /// `GET`s Redis served during the run (the scaler's only command).
    pub redis_get_calls: Option<u64>,
    /// All commands Redis served during the run, except `INFO` and the
    /// seeder's `SET`s.
    pub redis_calls: Option<u64>,
    pub redis_calls_per_request: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad target {target}: {source}")]
    Target { target: String, source: tonic::transport::Error },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: tonic::transport::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

struct Sample {
    code: Option<tonic::Code>,
    service_us: u64,
    scheduled_us: u64,
}

pub async fn run(args: &LoadArgs) -> Result<Report, LoadError> {
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(args).await?);
    }
    let mut redis_conn = match &args.redis_url {
        Some(url) => Some(redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?),
        None => None,
    };
    let seeder = match (&mut redis_conn, args.seed_desired) {
        (Some(conn), Some(desired)) => {
            let key = rtc_core::Keys::new(args.key_prefix.clone()).scale_decision();
            seed_once(conn, &key, desired).await?;
            Some(tokio::spawn(seed(conn.clone(), key, desired)))
        }
        _ => None,
    };

    let request = GetMetricsRequest {
        scaled_object_ref: Some(ScaledObjectRef {
            name: "socket".into(),
            namespace: "rtc".into(),
            scaler_metadata: [(crate::grpc::METRIC_NAME_KEY.to_owned(), args.metric_name.clone())].into(),
        }),
        metric_name: args.metric_name.clone(),
    };
    // Warm up: wait (bounded) until the scaler answers, e.g. until it has
    // read the seeded decision, so the run measures the steady state.
    let ready = Instant::now() + Duration::from_secs(5);
    while ExternalScalerClient::new(channels[0].clone()).get_metrics(request.clone()).await.is_err()
        && Instant::now() < ready
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = match &mut redis_conn {
        Some(conn) => Some(command_stats(conn).await?),
        None => None,
    };
    let total = args.rate * args.duration_s;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks: JoinSet<Sample> = JoinSet::new();
    let mut samples = Vec::with_capacity(total as usize);
    let (mut scheduled, mut dropped) = (0u64, 0u64);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while scheduled < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while scheduled < due {
            let intended = start + Duration::from_secs_f64(scheduled as f64 / args.rate as f64);
            let channel = channels[(scheduled % args.connections) as usize].clone();
            let rpc = args.rpc;
            scheduled += 1;
            if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
                dropped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (request, in_flight) = (request.clone(), in_flight.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                let code = match rpc {
                    Rpc::GetMetrics => match ExternalScalerClient::new(channel).get_metrics(request).await {
                        Ok(r) if !r.get_ref().metric_values.is_empty() => None,
                        Ok(_) => Some(tonic::Code::Internal),
                        Err(status) => Some(status.code()),
                    },
                    Rpc::HealthCheck => {
                        let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
                        match tonic_health::pb::health_client::HealthClient::new(channel).check(check).await {
                            Ok(_) => None,
                            Err(status) => Some(status.code()),
                        }
                    }
                };
                let done = Instant::now();
                in_flight.fetch_sub(1, Ordering::Relaxed);
                Sample {
                    code,
                    service_us: (done - sent).as_micros() as u64,
                    scheduled_us: done.saturating_duration_since(intended).as_micros() as u64,
                }
            });
        }
        while let Some(done) = tasks.try_join_next() {
            samples.extend(done.ok());
        }
    }
    let sending = start.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(done) = tasks.join_next().await {
            samples.extend(done.ok());
        }
    })
    .await;
    tasks.abort_all();
    if let Some(seeder) = seeder {
        seeder.abort();
    }
    let after = match &mut redis_conn {
        Some(conn) => Some(command_stats(conn).await?),
        None => None,
    };

    let mut report = summarize(args, &samples, scheduled - dropped, dropped, sending);
    if let (Some(before), Some(after)) = (before, after) {
        let delta =
            |name: &str| after.get(name).copied().unwrap_or(0).saturating_sub(before.get(name).copied().unwrap_or(0));
        let all: u64 = after.keys().filter(|k| !matches!(k.as_str(), "info" | "set")).map(|k| delta(k)).sum();
        report.redis_get_calls = Some(delta("get"));
        report.redis_calls = Some(all);
        report.redis_calls_per_request = Some(if report.ok == 0 { 0.0 } else { all as f64 / report.ok as f64 });
    }
    Ok(report)
}

async fn connect(args: &LoadArgs) -> Result<Channel, LoadError> {
    let target = || args.target.clone();
    let mut endpoint =
        Endpoint::from_shared(args.target.clone()).map_err(|source| LoadError::Target { target: target(), source })?;
    endpoint = endpoint.tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
    if args.tls_ca.is_some() || args.tls_cert.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &args.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(|source| LoadError::Target { target: target(), source })?;
    }
    endpoint.connect().await.map_err(|source| LoadError::Connect { target: target(), source })
}

fn read(path: &PathBuf) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read { path: path.clone(), source })
}

fn summarize(args: &LoadArgs, samples: &[Sample], sent: u64, dropped: u64, sending: Duration) -> Report {
    let mut error_codes = BTreeMap::new();
    for s in samples {
        if let Some(code) = s.code {
            *error_codes.entry(format!("{code:?}")).or_insert(0) += 1;
        }
    }
    let ok = samples.iter().filter(|s| s.code.is_none()).count() as u64;
    let mut service: Vec<u64> = samples.iter().map(|s| s.service_us).collect();
    let mut from_schedule: Vec<u64> = samples.iter().map(|s| s.scheduled_us).collect();
    service.sort_unstable();
    from_schedule.sort_unstable();
    Report {
        rpc: match args.rpc {
            Rpc::GetMetrics => "GetMetrics",
            Rpc::HealthCheck => "grpc.health.v1.Health/Check",
        },
        target: args.target.clone(),
        rate: args.rate,
        duration_s: args.duration_s,
        connections: args.connections,
        sent,
        ok,
        // Unanswered requests (cut off at the end) count as errors too.
        errors: sent - ok,
        dropped,
        error_codes,
        achieved_rps: round3(sent as f64 / sending.as_secs_f64().max(1e-9)),
        p50_ms: percentile_ms(&service, 0.50),
        p90_ms: percentile_ms(&service, 0.90),
        p99_ms: percentile_ms(&service, 0.99),
        p999_ms: percentile_ms(&service, 0.999),
        max_ms: service.last().map_or(0.0, |us| round3(*us as f64 / 1000.0)),
        p99_from_schedule_ms: percentile_ms(&from_schedule, 0.99),
        ..Report::default()
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    round3(sorted_us[rank - 1] as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `calls` per command from `INFO commandstats`.
async fn command_stats(conn: &mut redis::aio::MultiplexedConnection) -> Result<BTreeMap<String, u64>, LoadError> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    Ok(parse_command_stats(&info))
}

pub fn parse_command_stats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

async fn seed_once(conn: &mut redis::aio::MultiplexedConnection, key: &str, desired: u32) -> Result<(), LoadError> {
    use rtc_core::Document;
    let decision = rtc_core::Decision {
        v: rtc_core::CONTRACT_VERSION,
        desired_replicas: desired,
        current_replicas: desired,
        action: rtc_core::Action::Hold,
        step: 0,
        urgency: rtc_core::Urgency::None,
        reason: "scaler-load seed".into(),
        decided_at_ms: crate::service::now_ms(),
        leader_epoch: 0,
    };
    let _: () = redis::cmd("SET").arg(key).arg(decision.to_json()).query_async(conn).await?;
    Ok(())
}

async fn seed(mut conn: redis::aio::MultiplexedConnection, key: String, desired: u32) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = seed_once(&mut conn, &key, desired).await {
            tracing::warn!(error = %e, "seeding the decision failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&LoadArgs::command()), Vec::<String>::new());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 50.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&us, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn command_stats_are_parsed() {
        let info = "# Commandstats\r\ncmdstat_get:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_info:calls=2,usec=1\r\n";
        let stats = parse_command_stats(info);
        assert_eq!(stats.get("get"), Some(&12));
        assert_eq!(stats.get("info"), Some(&2));
    }
}
